"""Result tables as CockroachDB's shell prints them, and as CSV or JSON for scripts."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return str(value)


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """``  col | col`` header, a ``---+---`` rule, right-aligned numbers and a ``(N rows)`` footer."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(parts: list[str]) -> str:
        return " " + "|".join(f" {p} " for p in parts).rstrip()

    header = []
    for c, w in zip(columns, widths, strict=True):
        left = (w - len(c)) // 2
        header.append(" " * left + c + " " * (w - len(c) - left))
    out = [line(header), "-" + "+".join("-" * (w + 2) for w in widths)]
    for raw, row in zip(rows, cells, strict=True):
        out.append(line([v.rjust(w) if _numeric(r) else v.ljust(w) for v, w, r in zip(row, widths, raw, strict=True)]))
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def format_csv(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else _cell(v) for v in row])
    return buf.getvalue().rstrip("\n")


# Ids are 64-bit (CockroachDB's unique_rowid()): past 2^53 a JSON number loses digits in JavaScript
# and jq, so ids are always strings in JSON, as the CockroachDB Cloud API writes them.
_ID_COLUMNS = frozenset({"job_id", "id", "crdb_job_id", "coordinator_id", "schedule_id"})


def format_json(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def plain(column: str, v: object) -> object:
        if isinstance(v, bytes):
            return v.hex()
        if column in _ID_COLUMNS and isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        return v

    return json.dumps([{c: plain(c, v) for c, v in zip(columns, row, strict=True)} for row in rows], indent=2)


FORMATS = {"table": format_table, "csv": format_csv, "json": format_json}


def render(columns: Sequence[str], rows: Sequence[Sequence[object]], fmt: str = "table") -> str:
    return FORMATS[fmt](columns, rows)
