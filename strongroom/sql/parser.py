"""Parser for Strongroom's SQL: CockroachDB's BACKUP/RESTORE family plus SQLite pass-through.

A script is tokenized once (quotes, comments, placeholders), split into statements at ``;``
(outside CREATE TRIGGER bodies), and each statement whose first words are ours (BACKUP, RESTORE,
SHOW, ALTER BACKUP, CREATE/DROP DATABASE, USE, SET database) is parsed by an LALR grammar (lark)
fed with our tokens; anything else becomes :class:`~strongroom.sql.ast.Passthrough`.

Every failure is a :class:`~strongroom.errors.UsageError`. Syntax errors read like CockroachDB's::

    at or near "into": syntax error
    DETAIL: source SQL:
    BACKUP DATABASE INTO 'x'
                    ^
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lark import Lark, Token, Transformer, Tree
from lark.exceptions import UnexpectedInput, VisitError

from ..errors import StrongroomError, UsageError
from ..uri import REDACTED, redact_loose
from .ast import (
    ALWAYS_FULL,
    LATEST,
    AlterBackup,
    Backup,
    CancelJob,
    ControlSchedule,
    CreateDatabase,
    CreateSchedule,
    DropDatabase,
    Options,
    Passthrough,
    Restore,
    ShowBackup,
    ShowBackups,
    ShowDatabases,
    ShowJobs,
    ShowSchedules,
    ShowTables,
    Statement,
    Targets,
    Use,
)

__all__ = ["KEYWORDS", "RESERVED_KEYWORDS", "SQLSyntaxError", "parse", "split_statements"]


class SQLSyntaxError(UsageError):
    """A statement that does not parse; ``position`` is the offset of the offending token in the input."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


# --------------------------------------------------------------------------------------------------
# Grammar

# Keywords that can never be a name (CockroachDB reserves them too).
RESERVED_KEYWORDS = frozenset(
    {"AS", "CREATE", "FOR", "FROM", "IN", "INTO", "NOT", "TABLE", "TO", "WITH", "TRUE", "FALSE"}
)
# Keywords that are still usable as names (``USE latest``, ``WITH detached``...).
UNRESERVED_KEYWORDS = frozenset(
    {
        "ADD", "ALTER", "BACKUP", "BACKUPS", "CASCADE", "DATABASE", "DATABASES", "DROP", "EXISTS", "IF",
        "JOB", "JOBS", "KMS", "LATEST", "NEW_KMS", "OF", "OLD_KMS", "OPTIONS", "PRIMARY", "REGION", "RESTORE",
        "RESTRICT", "SET",
        "SHOW", "SYSTEM", "TABLES", "TIME", "USE", "WHEN", "COMPLETE",
        "SCHEDULE", "SCHEDULES", "RECURRING", "FULL", "ALWAYS", "NEVER", "RUNNING", "PAUSED", "PAUSE",
        "RESUME", "GROUPS", "THRESHOLD",
        "CANCEL", "ROTATE", "DATA", "KEY",
    }
)  # fmt: skip
KEYWORDS = RESERVED_KEYWORDS | UNRESERVED_KEYWORDS

_GRAMMAR = r"""
start: backup | restore | show_backups | show_backup | alter_backup | create_db | drop_db
     | show_databases | show_tables | use | set_db | jobs
     | create_schedule | show_schedules | control_schedule

backup: BACKUP [targets] INTO location [as_of] [options]
restore: RESTORE [targets] FROM location [as_of] [options]
show_backups: SHOW BACKUPS IN dest
show_backup: SHOW BACKUP location [options]
           | SHOW BACKUP FROM LATEST IN dest [options]       -> show_backup_latest
           | SHOW BACKUP FROM str_or_ph IN dest [options]    -> show_backup_subdir
alter_backup: ALTER BACKUP location ADD NEW_KMS EQ uri_list WITH OLD_KMS EQ uri_list
            | ALTER BACKUP location DROP KMS EQ uri_list WITH OLD_KMS EQ uri_list       -> alter_backup_drop
            | ALTER BACKUP location ROTATE DATA KEY WITH OLD_KMS EQ uri_list [new_kms] -> alter_backup_rotate
new_kms: COMMA NEW_KMS EQ uri_list

location: dest                     -> loc_exact
        | LATEST IN dest           -> loc_latest
        | str_or_ph IN dest        -> loc_subdir
dest: uri_list
uri_list: str_or_ph
        | LPAR str_or_ph (COMMA str_or_ph)* RPAR
str_or_ph: STRING | PLACEHOLDER

targets: DATABASE name (COMMA name)*                -> db_targets
       | TABLE table_name (COMMA table_name)*       -> table_targets
table_name: name (DOT name)~0..2

as_of: AS OF SYSTEM TIME as_of_expr
as_of_expr: STRING                                   -> as_of_string
          | PLACEHOLDER                              -> as_of_placeholder
          | INT                                      -> as_of_number
          | NUMBER                                   -> as_of_number
          | name LPAR [as_of_arg (COMMA as_of_arg)*] RPAR -> as_of_call
as_of_arg: STRING | INT | NUMBER

options: WITH option (COMMA option)*
       | WITH OPTIONS LPAR option (COMMA option)* RPAR
option: name [EQ opt_value]
key_group: LPAR str_or_ph (COMMA str_or_ph)* [COMMA] RPAR
opt_value: STRING                                   -> ov_string
         | PLACEHOLDER                              -> ov_placeholder
         | LPAR str_or_ph (COMMA str_or_ph)* RPAR   -> ov_list
         | GROUPS LPAR key_group (COMMA key_group)* RPAR THRESHOLD INT -> ov_groups
         | name                                     -> ov_name
         | TRUE                                     -> ov_true
         | FALSE                                    -> ov_false

create_db: CREATE DATABASE [if_not_exists] name [primary_region]
if_not_exists: IF NOT EXISTS
primary_region: PRIMARY REGION [EQ] name_or_string
drop_db: DROP DATABASE [if_exists] name [CASCADE | RESTRICT]
if_exists: IF EXISTS
show_databases: SHOW DATABASES
show_tables: SHOW TABLES [FROM name]
use: USE name_or_string
set_db: SET DATABASE (EQ | TO) name_or_string
name_or_string: name | STRING
jobs: SHOW JOBS                      -> show_jobs
    | SHOW JOB job_ref                  -> show_job
    | SHOW JOB WHEN COMPLETE job_ref    -> show_jobs_when_complete
    | SHOW JOBS WHEN COMPLETE LPAR job_ref (COMMA job_ref)* RPAR -> show_jobs_when_complete
    | CANCEL JOB job_ref                -> cancel_job
job_ref: INT | PLACEHOLDER

create_schedule: CREATE SCHEDULE [if_not_exists] [schedule_label] FOR BACKUP [targets] INTO dest [options] when
when: RECURRING recurrence [full_backup] [schedule_options]
schedule_label: name | STRING | PLACEHOLDER
recurrence: str_or_ph | NEVER
full_backup: FULL BACKUP (str_or_ph | ALWAYS)
schedule_options: WITH SCHEDULE OPTIONS option (COMMA option)*
show_schedules: SHOW [RUNNING | PAUSED] SCHEDULES [FOR BACKUP]
              | SHOW SCHEDULE job_ref                          -> show_schedule
control_schedule: (PAUSE | RESUME | DROP) SCHEDULE job_ref

name: IDENT | @UNRESERVED@

%declare IDENT STRING PLACEHOLDER INT NUMBER LPAR RPAR COMMA EQ DOT OP
%declare @KEYWORDS@
"""

# Each keyword is its own terminal; unreserved ones are also names.
_GRAMMAR = _GRAMMAR.replace("@UNRESERVED@", " | ".join(sorted(UNRESERVED_KEYWORDS)))
_GRAMMAR = _GRAMMAR.replace("@KEYWORDS@", " ".join(sorted(KEYWORDS)))


@functools.cache
def _lark() -> Lark:
    """Built on first use: building the LALR tables costs ~0.1 s, which every CLI command would pay."""
    return Lark(_GRAMMAR, parser="lalr", lexer="basic", maybe_placeholders=True)


# --------------------------------------------------------------------------------------------------
# Tokenizer


@dataclass(frozen=True, slots=True)
class _Tok:
    """One lexical token of a script; ``start``/``end`` are offsets into the whole script."""

    kind: str  # WORD QIDENT STRING INT NUMBER PLACEHOLDER PUNCT OP ERROR
    text: str
    value: str
    start: int
    end: int
    error: str | None = None


_WS = re.compile(r"\s+")
_WORD = re.compile(r"[^\W\d][\w$]*")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_PLACEHOLDER = re.compile(r"\$[0-9]+")
_DIGITS = re.compile(r"[0-9]+")
_MULTI_OP = re.compile(r"->>|->|\|\||<=|>=|<>|!=|==|::|<<|>>")
_PUNCT = "(),=.;"


def _scan_quoted(sql: str, i: int, quote: str) -> tuple[int, str, bool]:
    """Scan a quoted token opening at ``i``; doubled quotes escape. Returns (end, inner value, closed)."""
    j = i + 1
    parts = []
    n = len(sql)
    while True:
        k = sql.find(quote, j)
        if k < 0:
            parts.append(sql[j:])
            return n, "".join(parts), False
        parts.append(sql[j:k])
        if k + 1 < n and sql[k + 1] == quote:
            parts.append(quote)
            j = k + 2
            continue
        return k + 1, "".join(parts), True


def _tokenize(sql: str) -> list[_Tok]:
    """All tokens of ``sql`` except whitespace and (terminated) comments; never raises."""
    toks: list[_Tok] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        m = _WS.match(sql, i)
        if m:
            i = m.end()
            continue
        if sql.startswith("--", i):
            k = sql.find("\n", i)
            i = n if k < 0 else k + 1
            continue
        if sql.startswith("/*", i):
            k = sql.find("*/", i + 2)
            if k < 0:
                toks.append(_Tok("ERROR", sql[i:], sql[i:], i, n, "unterminated comment"))
                break
            i = k + 2
            continue
        if c in "'\"":
            end, value, closed = _scan_quoted(sql, i, c)
            error = None if closed else "unterminated string"
            if closed and c == '"' and not value:
                error = "zero-length delimited identifier"
            toks.append(_Tok("STRING" if c == "'" else "QIDENT", sql[i:end], value, i, end, error))
            i = end
            continue
        if c == "`" or c == "[":
            # SQLite's other identifier quotes: only matter for splitting pass-through statements.
            end, value, _closed = _scan_quoted(sql, i, "`" if c == "`" else "]")
            toks.append(_Tok("OP", sql[i:end], value, i, end))
            i = end
            continue
        m = _PLACEHOLDER.match(sql, i)
        if m:
            toks.append(_Tok("PLACEHOLDER", m.group(), m.group(), i, m.end()))
            i = m.end()
            continue
        m = _NUMBER.match(sql, i)
        if m:
            text = m.group()
            kind = "INT" if _DIGITS.fullmatch(text) else "NUMBER"
            toks.append(_Tok(kind, text, text, i, m.end()))
            i = m.end()
            continue
        m = _WORD.match(sql, i)
        if m:
            text = m.group()
            toks.append(_Tok("WORD", text, text.lower(), i, m.end()))
            i = m.end()
            continue
        m = _MULTI_OP.match(sql, i)
        if m:
            toks.append(_Tok("OP", m.group(), m.group(), i, m.end()))
            i = m.end()
            continue
        toks.append(_Tok("PUNCT" if c in _PUNCT else "OP", c, c, i, i + 1))
        i += 1
    return toks


def _is_word(tok: _Tok | None, *words: str) -> bool:
    return tok is not None and tok.kind == "WORD" and tok.text.upper() in words


def _is_trigger(toks: list[_Tok]) -> bool:
    """``[EXPLAIN [QUERY PLAN]] CREATE [TEMP|TEMPORARY] TRIGGER ...`` (as sqlite3_complete sees it)."""
    i = 0
    if _is_word(toks[0], "EXPLAIN"):
        i = 1
        if len(toks) > 2 and _is_word(toks[1], "QUERY") and _is_word(toks[2], "PLAN"):
            i = 3
    if i >= len(toks) or not _is_word(toks[i], "CREATE"):
        return False
    i += 1
    if i < len(toks) and _is_word(toks[i], "TEMP", "TEMPORARY"):
        i += 1
    return i < len(toks) and _is_word(toks[i], "TRIGGER")


def split_statements(sql: str) -> list[list[_Tok]]:
    """Split a script into the token lists of its non-empty statements (without the ``;``).

    Inside a CREATE TRIGGER, once BEGIN is seen, only a ``;`` following ``; END`` ends the
    statement, so the body's own ``;`` (and CASE ... END) stay inside it.
    """
    statements: list[list[_Tok]] = []
    current: list[_Tok] = []
    trigger = in_body = False
    for tok in _tokenize(sql):
        if tok.kind == "PUNCT" and tok.text == ";":
            if not current:
                continue
            if in_body and not (
                len(current) >= 2
                and _is_word(current[-1], "END")
                and current[-2].kind == "PUNCT"
                and current[-2].text == ";"
            ):
                current.append(tok)
                continue
            statements.append(current)
            current, trigger, in_body = [], False, False
            continue
        current.append(tok)
        if len(current) <= 6 and not trigger:
            trigger = _is_trigger(current)
        if trigger and not in_body and _is_word(tok, "BEGIN"):
            in_body = True
    if current:
        statements.append(current)
    return statements


def _is_ours(toks: list[_Tok]) -> bool:
    """Does this statement go through our grammar rather than to SQLite?"""
    first = toks[0]
    second = toks[1] if len(toks) > 1 else None
    if _is_word(first, "BACKUP", "RESTORE", "SHOW", "USE"):
        return True
    if _is_word(first, "ALTER"):
        return _is_word(second, "BACKUP")
    if _is_word(first, "CANCEL"):
        return _is_word(second, "JOB")
    if _is_word(first, "CREATE", "DROP"):
        return _is_word(second, "DATABASE", "SCHEDULE")
    if _is_word(first, "SET"):
        return _is_word(second, "DATABASE")
    if _is_word(first, "PAUSE", "RESUME"):
        return _is_word(second, "SCHEDULE")
    return False


# --------------------------------------------------------------------------------------------------
# Errors


_USERINFO = re.compile(r"(//[^/@:?#]*:)[^/@?#]*@")


def _passphrase_tokens(toks: list[_Tok]) -> set[int]:
    """Indexes of every token that may be (part of) a passphrase: whatever follows
    ``encryption_passphrase [=]``, however malformed: a string or placeholder; a parenthesized list
    up to its closing parenthesis; anything else (an unquoted word, a form the lexer does not know)
    to the end of the statement, since where such a value ends cannot be known."""
    secret: set[int] = set()
    for k, tok in enumerate(toks):
        if tok.kind not in ("WORD", "QIDENT") or tok.value.lower() != "encryption_passphrase":
            continue
        j = k + 1
        if j < len(toks) and toks[j].kind == "PUNCT" and toks[j].text == "=":
            j += 1
        if j >= len(toks):
            continue
        if toks[j].kind == "PUNCT" and toks[j].text == "(":
            # A list of strings or placeholders ends at its closing parenthesis; anything else inside
            # (an unquoted word that may itself hold a parenthesis) hides the rest of the statement.
            end = len(toks) - 1
            for i in range(j + 1, len(toks)):
                tok = toks[i]
                if tok.kind == "PUNCT" and tok.text == ")":
                    end = i
                    break
                if not (tok.kind in ("STRING", "PLACEHOLDER") or (tok.kind == "PUNCT" and tok.text == ",")):
                    break
            after = toks[end + 1] if end + 1 < len(toks) else None
            if end == j + 1 or (after is not None and not (after.kind == "PUNCT" and after.text in ",;")):
                end = len(toks) - 1  # an empty list, or something glued after it: where it ends is unknown
            secret.update(range(j, end + 1))
        elif toks[j].kind in ("STRING", "PLACEHOLDER"):
            secret.add(j)
        else:
            secret.update(range(j, len(toks)))
    return secret


def _shown_string(toks: list[_Tok], k: int) -> str:
    """What an error message may show of string literal ``toks[k]``: passphrases, URI secrets redacted."""
    tok = toks[k]
    if k in _passphrase_tokens(toks):
        return REDACTED
    try:
        return _USERINFO.sub(rf"\g<1>{REDACTED}@", redact_loose(tok.value))
    except Exception:
        return REDACTED


def _error(head: str, toks: list[_Tok], sql: str, bad: int | None) -> SQLSyntaxError:
    """Build a CockroachDB-style error at token ``toks[bad]`` (None = end of statement)."""
    base = toks[0].start
    text = sql[base : toks[-1].end]
    pos = len(text) if bad is None else toks[bad].start - base
    # Render the statement with secrets redacted (passphrases whatever their form, URI secrets in
    # string literals), tracking the caret offset.
    secret = _passphrase_tokens(toks)
    pieces, cursor, shift = [], 0, 0
    for k, tok in enumerate(toks):
        if k in secret and tok.kind != "STRING":
            if tok.kind == "PUNCT" and tok.text in "(),":
                continue  # the shape of a list may show; its items may not
            literal = REDACTED
        elif tok.kind != "STRING":
            continue
        else:
            value = _shown_string(toks, k)
            if value == tok.value:
                continue
            literal = "'" + value.replace("'", "''") + ("'" if tok.error is None else "")
        start, end = tok.start - base, tok.end - base
        pieces.append(text[cursor:start] + literal)
        cursor = end
        if end <= pos:
            shift += len(literal) - (end - start)
    pieces.append(text[cursor:])
    shown = "".join(pieces)
    pos += shift
    line_start = shown.rfind("\n", 0, pos) + 1
    line_end = shown.find("\n", pos)
    if line_end < 0:
        line_end = len(shown)
    caret = "".join("\t" if ch == "\t" else " " for ch in shown[line_start:pos]) + "^"
    message = f"{head}\nDETAIL: source SQL:\n{shown[:line_end]}\n{caret}"
    return SQLSyntaxError(message, toks[-1].end if bad is None else toks[bad].start)


def _near(toks: list[_Tok], k: int) -> str:
    """Token ``toks[k]`` as CockroachDB names it in ``at or near "..."``."""
    tok = toks[k]
    if k in _passphrase_tokens(toks):
        return REDACTED
    if tok.kind == "STRING":
        return _shown_string(toks, k)
    if tok.kind == "QIDENT":
        return tok.value
    if tok.kind == "WORD":
        return tok.text.lower()
    return tok.text


# --------------------------------------------------------------------------------------------------
# Parsing one statement

_PUNCT_TYPES = {"(": "LPAR", ")": "RPAR", ",": "COMMA", "=": "EQ", ".": "DOT"}


def _lark_token(tok: _Tok) -> Token:
    if tok.kind == "WORD":
        upper = tok.text.upper()
        kind, value = (upper, tok.text) if upper in KEYWORDS else ("IDENT", tok.value)
    elif tok.kind == "QIDENT":
        kind, value = "IDENT", tok.value
    elif tok.kind == "PUNCT":
        kind, value = _PUNCT_TYPES.get(tok.text, "OP"), tok.text
    elif tok.kind in ("STRING", "PLACEHOLDER", "INT", "NUMBER"):
        kind, value = tok.kind, tok.value
    else:
        kind, value = "OP", tok.text
    return Token(kind, value, start_pos=tok.start, end_pos=tok.end)


def _parse_tree(toks: list[_Tok], sql: str) -> Tree:
    interactive = _lark().parse_interactive("")
    for k, tok in enumerate(toks):
        if tok.error is not None:
            raise _error(f"lexical error: {tok.error}", toks, sql, k)
        try:
            interactive.feed_token(_lark_token(tok))
        except UnexpectedInput:
            raise _error(f'at or near "{_near(toks, k)}": syntax error', toks, sql, k) from None
    try:
        return interactive.feed_eof()
    except UnexpectedInput:
        raise _error('at or near "EOF": syntax error', toks, sql, None) from None


# --------------------------------------------------------------------------------------------------
# Options

_STRING_OPTIONS = frozenset({"encryption_passphrase"})
_NAME_OPTIONS = frozenset({"new_db_name", "into_db"})
_FLAG_OPTIONS = frozenset(
    {
        "check_files",
        "detached",
        "include_unencrypted_data",
        "verify",
        "schema_only",
        "verify_backup_table_data",
        "skip_missing_foreign_keys",
    }
)
# flags that also accept ``= true|false``
_BOOL_VALUE_OPTIONS = _FLAG_OPTIONS - {"check_files"}
_RESTORE_FLAGS = frozenset({"verify", "schema_only", "verify_backup_table_data", "skip_missing_foreign_keys"})
_KNOWN_OPTIONS = frozenset({"kms"}) | _STRING_OPTIONS | _NAME_OPTIONS | _FLAG_OPTIONS
_ALLOWED_OPTIONS = {
    "BACKUP": frozenset({"kms", "encryption_passphrase", "detached", "include_unencrypted_data"}),
    "RESTORE": frozenset({"kms", "encryption_passphrase", "new_db_name", "into_db", "detached"}) | _RESTORE_FLAGS,
    "SHOW BACKUP": frozenset({"kms", "encryption_passphrase", "check_files"}),
}


@dataclass(frozen=True)
class _Value:
    """An option value before decoding: kind is string, list, name, bool or param."""

    kind: str
    value: Any
    placeholder: str = ""


def _decode_options(raw: list[tuple[str, _Value | None]] | None, statement: str) -> Options:
    """Check option names and values against the registry and build :class:`Options`."""
    if not raw:
        return Options()
    seen: dict[str, object] = {}
    for name, val in raw:
        if name not in _KNOWN_OPTIONS:
            raise UsageError(f'unknown option "{name}"')
        if name in seen:
            raise UsageError(f'"{name}" specified multiple times')
        if name not in _ALLOWED_OPTIONS[statement]:
            raise UsageError(f'option "{name}" cannot be used with {statement}')
        seen[name] = _decode_value(name, val)
    if "kms" in seen and "encryption_passphrase" in seen:
        raise UsageError("cannot have both encryption_passphrase and kms option set")
    kms = seen.get("kms")
    if isinstance(kms, tuple) and len(kms) == 2 and isinstance(kms[1], int):  # GROUPS(...) THRESHOLD n
        if statement != "BACKUP":
            raise UsageError(f"kms = GROUPS(...) is for BACKUP: {statement} takes kms = (one key from each group)")
        groups, threshold = kms
        seen["kms"] = tuple(u for g in groups for u in g)
        seen["kms_groups"], seen["kms_threshold"] = groups, threshold
    return Options(**seen)  # type: ignore[arg-type]


def _decode_value(name: str, val: _Value | None) -> object:
    if name in _FLAG_OPTIONS:
        if val is None:
            return True
        if name not in _BOOL_VALUE_OPTIONS:
            raise UsageError(f'option "{name}" does not take a value')
        if val.kind == "bool" or (val.kind == "param" and isinstance(val.value, bool)):
            return bool(val.value)
        raise UsageError(f'option "{name}" must be true or false')
    if val is None:
        raise UsageError(f'option "{name}" requires a value')
    if name == "kms":
        if val.kind == "groups":
            return val.value  # (groups, threshold): _decode_options spreads it
        if val.kind == "string":
            return (val.value,)
        if val.kind == "list":
            return tuple(val.value)
        if val.kind == "param":
            if isinstance(val.value, str):
                return (val.value,)
            if isinstance(val.value, (list, tuple)) and val.value and all(isinstance(v, str) for v in val.value):
                return tuple(val.value)
            raise UsageError(f"placeholder {val.placeholder}: expected a string or a list of strings")
        raise UsageError('option "kms" requires a string or a parenthesized list of strings')
    kinds = ("string", "name") if name in _NAME_OPTIONS else ("string",)
    if val.kind in kinds:
        return val.value
    if val.kind == "param":
        if isinstance(val.value, str):
            return val.value
        raise UsageError(f"placeholder {val.placeholder}: expected a string value, got {type(val.value).__name__}")
    wanted = "a name or a string" if name in _NAME_OPTIONS else "a string"
    raise UsageError(f'option "{name}" requires {wanted} value')


# CockroachDB's schedule options, plus Strongroom's ``retention`` (a forget policy run after each success).
_SCHEDULE_STRING_OPTIONS = frozenset({"first_run", "on_execution_failure", "on_previous_running", "retention"})
_SCHEDULE_FLAG_OPTIONS = frozenset({"ignore_existing_backups"})


def _decode_schedule_options(raw: list[tuple[str, _Value | None]]) -> tuple[tuple[str, object], ...]:
    seen: dict[str, object] = {}
    for name, val in raw:
        if name not in _SCHEDULE_STRING_OPTIONS | _SCHEDULE_FLAG_OPTIONS:
            known = ", ".join(sorted(_SCHEDULE_STRING_OPTIONS | _SCHEDULE_FLAG_OPTIONS))
            raise UsageError(f'unknown schedule option "{name}" (known: {known})')
        if name in seen:
            raise UsageError(f'schedule option "{name}" specified multiple times')
        if name in _SCHEDULE_FLAG_OPTIONS:
            if val is None or val.kind == "bool":
                seen[name] = True if val is None else bool(val.value)
                continue
            raise UsageError(f'schedule option "{name}" must be true or false')
        if val is None:
            raise UsageError(f'schedule option "{name}" requires a value')
        if val.kind in ("string", "name") or (val.kind == "param" and isinstance(val.value, str)):
            seen[name] = str(val.value)
            continue
        raise UsageError(f'schedule option "{name}" requires a string value')
    return tuple(seen.items())


@dataclass(frozen=True)
class _ScheduleOptions:
    items: tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class _When:
    recurrence: str | None
    full_backup: str | None
    options: tuple[tuple[str, object], ...]


# --------------------------------------------------------------------------------------------------
# Tree -> AST


@dataclass(frozen=True)
class _Location:
    destinations: tuple[str, ...]
    subdir: str | None


def _tokens(children: list[Any], *types: str) -> list[Token]:
    return [c for c in children if isinstance(c, Token) and c.type in types]


class _ToAST(Transformer):
    """Turns the lark tree of one statement into an AST node, resolving placeholders."""

    def __init__(self, params: Sequence[object] | None) -> None:
        super().__init__(visit_tokens=False)
        self.params = params

    # ---- leaves
    def param(self, tok: Token) -> object:
        index = int(tok[1:]) if len(tok) <= 10 else 0
        if self.params is None or not 1 <= index <= len(self.params):
            raise UsageError(f"no value provided for placeholder: {tok}")
        return self.params[index - 1]

    def string_param(self, tok: Token) -> str:
        value = self.param(tok)
        if not isinstance(value, str):
            raise UsageError(f"placeholder {tok}: expected a string value, got {type(value).__name__}")
        return value

    def str_or_ph(self, children: list[Token]) -> str:
        (tok,) = children
        return self.string_param(tok) if tok.type == "PLACEHOLDER" else str(tok)

    def name(self, children: list[Token]) -> str:
        (tok,) = children
        return str(tok) if tok.type == "IDENT" else str(tok).lower()

    def name_or_string(self, children: list[Any]) -> str:
        (value,) = children
        return str(value)

    def table_name(self, children: list[str]) -> str:
        return ".".join(c for c in children if not isinstance(c, Token))

    def uri_list(self, children: list[Any]) -> tuple[str, ...]:
        return tuple(c for c in children if not isinstance(c, Token))

    def dest(self, children: list[tuple[str, ...]]) -> tuple[str, ...]:
        return children[0]

    # ---- locations
    def loc_exact(self, children: list[Any]) -> _Location:
        return _Location(children[0], None)

    def loc_latest(self, children: list[Any]) -> _Location:
        return _Location(children[-1], LATEST)

    def loc_subdir(self, children: list[Any]) -> _Location:
        return _Location(children[-1], children[0])

    # ---- targets, AS OF
    def db_targets(self, children: list[Any]) -> Targets:
        return Targets("database", tuple(c for c in children if not isinstance(c, Token)))

    def table_targets(self, children: list[Any]) -> Targets:
        return Targets("table", tuple(c for c in children if not isinstance(c, Token)))

    def as_of(self, children: list[Any]) -> str:
        return children[-1]

    def as_of_string(self, children: list[Token]) -> str:
        return str(children[0])

    def as_of_placeholder(self, children: list[Token]) -> str:
        value = self.param(children[0])
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise UsageError(f"placeholder {children[0]}: expected a string value, got {type(value).__name__}")
        return str(value)

    def as_of_number(self, children: list[Token]) -> str:
        return str(children[0])

    def as_of_arg(self, children: list[Token]) -> str:
        (tok,) = children
        return "'" + tok.replace("'", "''") + "'" if tok.type == "STRING" else str(tok)

    def as_of_call(self, children: list[Any]) -> str:
        func = children[0]
        args = [c for c in children[1:] if isinstance(c, str) and not isinstance(c, Token)]
        return f"{func}({', '.join(args)})"

    # ---- options
    def options(self, children: list[Any]) -> list[tuple[str, _Value | None]]:
        return [c for c in children if isinstance(c, tuple)]

    def option(self, children: list[Any]) -> tuple[str, _Value | None]:
        return (children[0], children[2])

    def ov_string(self, children: list[Token]) -> _Value:
        return _Value("string", str(children[0]))

    def ov_placeholder(self, children: list[Token]) -> _Value:
        return _Value("param", self.param(children[0]), str(children[0]))

    def key_group(self, children: list[Any]) -> tuple[str, ...]:
        return tuple(c for c in children if isinstance(c, str) and not isinstance(c, Token))

    def ov_groups(self, children: list[Any]) -> _Value:
        groups = tuple(c for c in children if isinstance(c, tuple))
        threshold = next(c for c in children if isinstance(c, Token) and c.type == "INT")
        return _Value("groups", (groups, int(threshold)))

    def ov_list(self, children: list[Any]) -> _Value:
        return _Value("list", tuple(c for c in children if not isinstance(c, Token)))

    def ov_name(self, children: list[str]) -> _Value:
        return _Value("name", children[0])

    def ov_true(self, children: list[Token]) -> _Value:
        return _Value("bool", True)

    def ov_false(self, children: list[Token]) -> _Value:
        return _Value("bool", False)

    # ---- statements
    def start(self, children: list[Statement]) -> Statement:
        return children[0]

    @staticmethod
    def _parts(children: list[Any]) -> tuple[Targets | None, _Location, str | None, Any]:
        targets = next((c for c in children if isinstance(c, Targets)), None)
        loc = next(c for c in children if isinstance(c, _Location))
        as_of = children[-2]
        return targets, loc, as_of if isinstance(as_of, str) and not isinstance(as_of, Token) else None, children[-1]

    def backup(self, children: list[Any]) -> Backup:
        targets, loc, as_of, opts = self._parts(children)
        options = _decode_options(opts, "BACKUP")
        return Backup(targets, loc.destinations, loc.subdir, as_of, options)

    def restore(self, children: list[Any]) -> Restore:
        targets, loc, as_of, opts = self._parts(children)
        options = _decode_options(opts, "RESTORE")
        return Restore(targets, loc.destinations, loc.subdir, as_of, options)

    def show_backups(self, children: list[Any]) -> ShowBackups:
        return ShowBackups(children[-1])

    def show_backup(self, children: list[Any]) -> ShowBackup:
        loc = children[2]
        return ShowBackup(loc.destinations, loc.subdir, _decode_options(children[-1], "SHOW BACKUP"))

    def show_backup_latest(self, children: list[Any]) -> ShowBackup:
        return ShowBackup(children[-2], LATEST, _decode_options(children[-1], "SHOW BACKUP"))

    def show_backup_subdir(self, children: list[Any]) -> ShowBackup:
        return ShowBackup(children[-2], children[3], _decode_options(children[-1], "SHOW BACKUP"))

    def alter_backup(self, children: list[Any]) -> AlterBackup:
        loc = children[2]
        uris = [c for c in children if isinstance(c, tuple) and not isinstance(c, _Location)]
        return AlterBackup(loc.destinations, loc.subdir, new_kms=uris[0], old_kms=uris[1])

    def alter_backup_drop(self, children: list[Any]) -> AlterBackup:
        loc = children[2]
        uris = [c for c in children if isinstance(c, tuple) and not isinstance(c, _Location)]
        return AlterBackup(loc.destinations, loc.subdir, drop_kms=uris[0], old_kms=uris[1])

    def new_kms(self, children: list[Any]) -> tuple[str, ...]:
        return tuple(children[-1])

    def alter_backup_rotate(self, children: list[Any]) -> AlterBackup:
        loc = children[2]
        uris = [c for c in children if isinstance(c, tuple) and not isinstance(c, _Location)]
        new = uris[1] if len(uris) > 1 else ()
        return AlterBackup(loc.destinations, loc.subdir, old_kms=uris[0], new_kms=new, rotate=True)

    def if_not_exists(self, children: list[Any]) -> bool:
        return True

    def if_exists(self, children: list[Any]) -> bool:
        return True

    def primary_region(self, children: list[Any]) -> tuple[str, str]:
        return ("region", children[-1])

    def create_db(self, children: list[Any]) -> CreateDatabase:
        region = children[4][1] if isinstance(children[4], tuple) else None
        return CreateDatabase(children[3], if_not_exists=children[2] is True, region=region)

    def drop_db(self, children: list[Any]) -> DropDatabase:
        return DropDatabase(children[3], if_exists=children[2] is True)

    def show_databases(self, children: list[Any]) -> ShowDatabases:
        return ShowDatabases()

    def show_tables(self, children: list[Any]) -> ShowTables:
        return ShowTables(children[-1])

    def use(self, children: list[Any]) -> Use:
        return Use(children[-1])

    def set_db(self, children: list[Any]) -> Use:
        return Use(children[-1])

    def show_jobs(self, children: list[Any]) -> ShowJobs:
        return ShowJobs()

    def show_job(self, children: list[Any]) -> ShowJobs:
        return ShowJobs(children[-1])

    def show_jobs_when_complete(self, children: list[Any]) -> ShowJobs:
        return ShowJobs(when_complete=tuple(c for c in children if isinstance(c, int) and not isinstance(c, Token)))

    # ---- schedules
    def schedule_label(self, children: list[Any]) -> str:
        tok = children[0]
        if isinstance(tok, Token) and tok.type == "PLACEHOLDER":
            return self.string_param(tok)
        return str(tok)

    def recurrence(self, children: list[Any]) -> str | None:
        tok = children[0]
        return None if isinstance(tok, Token) and tok.type == "NEVER" else str(tok)

    def full_backup(self, children: list[Any]) -> str:
        tok = children[-1]
        return ALWAYS_FULL if isinstance(tok, Token) and tok.type == "ALWAYS" else str(tok)

    def schedule_options(self, children: list[Any]) -> _ScheduleOptions:
        return _ScheduleOptions(_decode_schedule_options([c for c in children if isinstance(c, tuple)]))

    def when(self, children: list[Any]) -> _When:
        sched = children[-1] if isinstance(children[-1], _ScheduleOptions) else _ScheduleOptions(())
        return _When(children[1], children[2], sched.items)

    def create_schedule(self, children: list[Any]) -> CreateSchedule:
        label = children[3] if isinstance(children[3], str) and not isinstance(children[3], Token) else None
        targets = next((c for c in children if isinstance(c, Targets)), None)
        dest = next(c for c in children if isinstance(c, tuple))
        opts = next((c for c in children if isinstance(c, list)), None)
        when = children[-1]
        return CreateSchedule(
            label=label,
            if_not_exists=children[2] is True,
            targets=targets,
            destinations=dest,
            options=_decode_options(opts, "BACKUP"),
            recurrence=when.recurrence,
            full_backup=when.full_backup,
            schedule_options=when.options,
        )

    def show_schedules(self, children: list[Any]) -> ShowSchedules:
        which = _tokens(children, "RUNNING", "PAUSED")
        status = None if not which else ("ACTIVE" if which[0].type == "RUNNING" else "PAUSED")
        return ShowSchedules(status=status)

    def show_schedule(self, children: list[Any]) -> ShowSchedules:
        return ShowSchedules(schedule_id=children[-1])

    def control_schedule(self, children: list[Any]) -> ControlSchedule:
        return ControlSchedule(children[0].type, children[-1])

    def cancel_job(self, children: list[Any]) -> CancelJob:
        return CancelJob(children[-1])

    def job_ref(self, children: list[Token]) -> int:
        tok = children[-1]
        value = str(tok) if tok.type == "INT" else self.param(tok)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not _DIGITS.fullmatch(value):
            raise UsageError(f"placeholder {tok}: expected a job ID")
        if len(value) > 19 or int(value) >= 2**63:
            raise UsageError(f"job ID out of range: {value}")
        return int(value)


# --------------------------------------------------------------------------------------------------
# Entry point


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def check_sql_text(sql: str) -> None:
    """SQL text is UTF-8 without NUL characters (SQLite and CockroachDB take nothing else): say so
    at the edge rather than fail inside SQLite or an encoder with a traceback."""
    nul = sql.find("\x00")
    if nul >= 0:
        raise UsageError(
            f"the statement has a NUL character at offset {nul}: SQL text cannot hold one "
            "(write binary data as a blob literal such as x'00')"
        )
    bad = _LONE_SURROGATE.search(sql)
    if bad:
        raise UsageError(f"the statement is not valid UTF-8 text: an undecodable character at offset {bad.start()}")


def parse(sql: str, params: Sequence[object] | None = None) -> list[Statement]:
    """Parse a ``;``-separated script into statements; ``$n`` placeholders take ``params[n-1]``.

    Raises :class:`UsageError` (a :class:`SQLSyntaxError`, with ``position``, for syntax errors).
    """
    if not isinstance(sql, str):
        raise TypeError(f"sql must be a str, not {type(sql).__name__}")
    check_sql_text(sql)
    out: list[Statement] = []
    for toks in split_statements(sql):
        if not _is_ours(toks):
            if toks[-1].kind == "ERROR":
                # SQLite would silently drop the rest of the script; say so instead.
                raise _error(f"lexical error: {toks[-1].error}", toks, sql, len(toks) - 1)
            out.append(Passthrough(sql[toks[0].start : toks[-1].end]))
            continue
        tree = _parse_tree(toks, sql)
        try:
            out.append(_ToAST(params).transform(tree))
        except VisitError as exc:
            if isinstance(exc.orig_exc, StrongroomError):
                raise exc.orig_exc from None
            raise
    return out
