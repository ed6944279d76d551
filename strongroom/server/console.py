"""The web console at ``/``: the store at a glance, and the actions an operator takes every day.

Pages: **Overview** (each region's CMEK status, key type, redacted key, store key and data keys, the
files and bytes under each, the next data key rotation), **Backups** (managed backups per region and
whether each restores, the backup schedules, recent jobs with their progress, refreshed live) and
**Audit** (every use of a key, filterable). Actions: take a managed backup now, restore one under a
new name, rotate the data keys, run a schedule now. Enabling and revoking CMEK stay API-only, as in
CockroachDB Cloud's console.

Security, in the order a request meets it:

- **Authentication before the body.** The login form takes the API token (the same token as the
  API, compared in constant time) and sets a session cookie: random, ``HttpOnly``, ``SameSite=Strict``,
  ``Path=/``, expiring with the session (12 hours). Every other page and action checks that cookie
  from the headers alone; only then is an action's form read.
- **CSRF.** Each session has its own random token, rendered into every form; an action whose form
  does not carry it, or whose ``Origin`` is another site, is refused (403).
- **No secret in a page.** Key URIs are shown redacted, the token never; the pages set a strict
  Content-Security-Policy (scripts and styles only from this server, no framing), ``no-store`` caching
  and no referrer.
- **Offline.** Everything is served from here: no CDN, no web font.

Actions run in a background thread holding the service's lock (the scheduler's and the API's too),
as jobs of the store: the Backups page shows them from ``SHOW JOBS`` as they run.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from http.cookies import CookieError, SimpleCookie
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.types import Scope

from ..errors import StrongroomError
from ..store.audit import acting_as
from .scheduler import safe_message

if TYPE_CHECKING:
    from ..store import Store
    from .app import StoreService

log = logging.getLogger("strongroom.server")

SESSION_COOKIE = "strongroom_session"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 1024  # a flood of logins forgets the oldest sessions, never grows without bound
RECENT_JOBS = 20
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on form posts,
    # and the Origin check below needs the real one.
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


# ------------------------------------------------------------------------------------------ sessions


@dataclass
class ConsoleSession:
    csrf: str
    expires: float
    actor: str


class Sessions:
    """Logged-in browsers, in memory: a restart of ``serve`` logs everyone out."""

    def __init__(self) -> None:
        self._sessions: dict[str, ConsoleSession] = {}
        self._lock = threading.Lock()

    def new(self, actor: str) -> tuple[str, ConsoleSession]:
        sid = secrets.token_urlsafe(32)
        session = ConsoleSession(secrets.token_urlsafe(32), time.monotonic() + SESSION_TTL_S, actor)
        with self._lock:
            self._sessions[sid] = session
            while len(self._sessions) > MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
        return sid, session

    def get(self, sid: str | None) -> ConsoleSession | None:
        if not sid:
            return None
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None and session.expires < time.monotonic():
                del self._sessions[sid]
                return None
            return session

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)


# ------------------------------------------------------------------------------------------- actions


@dataclass
class ActionRecord:
    name: str
    started: str
    done: bool = False
    error: str | None = None


class Actions:
    """Console actions run in the background, one at a time per kind, with their outcome kept for the page."""

    def __init__(self, service: StoreService) -> None:
        self.service = service
        self.last: dict[str, ActionRecord] = {}
        self._lock = threading.Lock()

    def start(self, name: str, actor: str, work: Callable[[], object]) -> ActionRecord:
        with self._lock:
            running = self.last.get(name)
            if running is not None and not running.done:
                raise StrongroomError(f"{name} is already running: wait for it to finish")
            record = self.last[name] = ActionRecord(name, datetime.now().astimezone().isoformat(timespec="seconds"))

        def run() -> None:
            try:
                with self.service.lock, acting_as(actor):
                    work()
            except Exception as exc:  # shown on the page; a thread has no one else to tell
                record.error = safe_message(exc)
                log.warning("console action %s failed: %s", name, record.error)
            finally:
                record.done = True

        threading.Thread(target=run, name=f"console-{name}", daemon=True).start()
        return record


# ----------------------------------------------------------------------------------------- templates


# Templates and assets ship inside the package (templates/, static/): nothing is fetched from elsewhere.
_env = Environment(loader=PackageLoader("strongroom.server", "templates"), autoescape=select_autoescape(default=True))
_STATIC = {"console.css": "text/css", "console.js": "text/javascript"}


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("nav", name != "login")
    context.setdefault("flash", None)
    context.setdefault("live", False)
    html = _env.get_template(f"{name}.html").render(page=name, **context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


# ------------------------------------------------------------------------------------------- routes


# Paths whose POST needs a session before any of its body is read (the login form is the one POST
# that carries its own credential).
_SESSION_POSTS = ("/actions/", "/logout")


class Console:
    """The console's routes, and the check the server's guard runs before it reads a request body."""

    def __init__(self, service: StoreService, token: bytes, actor: str) -> None:
        self.sessions = Sessions()
        self.router = console_router(service, token, actor, self.sessions)

    def guard(self, scope: Scope) -> JSONResponse | None:
        """An action's POST without a live session is refused from its headers alone (401)."""
        if scope["method"] != "POST" or not scope["path"].startswith(_SESSION_POSTS):
            return None
        cookies = SimpleCookie()
        for name, value in scope["headers"]:
            if name == b"cookie":
                with suppress(CookieError):
                    cookies.load(value.decode("latin-1"))
        morsel = cookies.get(SESSION_COOKIE)
        if self.sessions.get(morsel.value if morsel else None) is None:
            return JSONResponse({"code": 401, "message": "not logged in"}, status_code=401, headers=HEADERS)
        return None


def console_router(service: StoreService, token: bytes, actor: str, sessions: Sessions) -> APIRouter:
    """The console's pages and actions over ``service``, for those who log in with ``token``."""
    router = APIRouter(include_in_schema=False)
    actions = Actions(service)

    def session_of(request: Request) -> ConsoleSession | None:
        return sessions.get(request.cookies.get(SESSION_COOKIE))

    def to_login() -> RedirectResponse:
        return RedirectResponse("/login", status_code=303, headers=HEADERS)

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return origin is None  # a browser sends Origin on every POST; "null" is an opaque origin
        return urlsplit(origin).netloc == request.headers.get("host", "")

    async def checked_form(request: Request) -> tuple[ConsoleSession, dict[str, str]] | Response:
        """The session (from the cookie, before the body is read), then the form and its CSRF token."""
        session = session_of(request)
        if session is None:
            return PlainTextResponse("not logged in", status_code=401, headers=HEADERS)
        if not same_origin(request):
            return PlainTextResponse("refused: the request came from another site", status_code=403, headers=HEADERS)
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        if not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
            refusal = "refused: the form's CSRF token is missing or wrong"
            return PlainTextResponse(refusal, status_code=403, headers=HEADERS)
        return session, form

    @router.get("/login")
    def login_page() -> HTMLResponse:
        return _page("login", title="Log in", error=None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        if not same_origin(request):
            return PlainTextResponse("refused: the request came from another site", status_code=403, headers=HEADERS)
        form = await request.form()
        given = form.get("token")
        if not isinstance(given, str) or not hmac.compare_digest(given.strip().encode(), token):
            return _page("login", status=401, title="Log in", error="That is not the API token.")
        sid, _session = sessions.new(actor)
        response = RedirectResponse("/", status_code=303, headers=HEADERS)
        response.set_cookie(SESSION_COOKIE, sid, max_age=SESSION_TTL_S, httponly=True, samesite="strict", path="/")
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        checked = await checked_form(request)
        if isinstance(checked, Response):
            return checked
        sessions.drop(request.cookies.get(SESSION_COOKIE))
        response = to_login()
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def flash_of(request: Request) -> str | None:
        name = request.query_params.get("started")
        if not name:
            return None
        record = actions.last.get(name)
        if record is None:
            return None
        if record.error:
            return f"{name} failed: {record.error}"
        return f"{name} {'done' if record.done else 'started'} ({record.started})"

    def logged_in(request: Request, name: str, title: str, content: Callable[[Store], dict[str, Any]]) -> Response:
        """A page for a logged-in browser (else the login page), with what every page shows."""
        session = session_of(request)
        if session is None:
            return to_login()
        view = service.view()
        return _page(name, title=title, csrf=session.csrf, store_id=view.id, flash=flash_of(request), **content(view))

    @router.get("/")
    def overview(request: Request) -> Response:
        return logged_in(request, "overview", "Overview", lambda view: {"regions": view.encryption_status()})

    def backups_content(view: Store) -> dict[str, Any]:
        listed = [
            {
                "region": b.region,
                "path": b.path,
                "full_subdir": b.full_subdir,
                "backup_type": b.backup_type,
                "end": b.row()[3],
                "as_of": b.as_of.isoformat(),
                "restorable": b.restorable,
                "reason": b.reason,
            }
            for b in view.managed_backups()
        ]
        return {
            "backups": listed,
            "databases": {r: view.dbs.in_region(r) for r in view.regions},
            "schedules": view.schedules.show(),
            "jobs": list(reversed(view.jobs.list()))[:RECENT_JOBS],
            "config": view.managed_backup_schedule,
            "live": True,
        }

    @router.get("/backups")
    def backups(request: Request) -> Response:
        return logged_in(request, "backups", "Backups", backups_content)

    @router.get("/audit")
    def audit(request: Request) -> Response:
        def content(view: Store) -> dict[str, Any]:
            records = view.audit_records()
            names = ("region", "actor", "operation", "result")
            filters = {n: request.query_params.get(n, "") for n in names}
            choices = {n: sorted({_audit_value(r, n) for r in records}) for n in names}
            shown = [r for r in records if all(not v or _audit_value(r, n) == v for n, v in filters.items())]
            return {"records": list(reversed(shown)), "total": len(records), "filters": filters, "choices": choices}

        return logged_in(request, "audit", "Audit", content)

    def started(name: str, back: str) -> RedirectResponse:
        return RedirectResponse(f"{back}?started={name}", status_code=303, headers=HEADERS)

    @router.post("/actions/{name}")
    async def action(name: str, request: Request) -> Response:
        checked = await checked_form(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        try:
            work, back = _action(service, name, form)
            actions.start(name, session.actor, work)
        except StrongroomError as exc:
            return PlainTextResponse(str(exc), status_code=400, headers=HEADERS)
        return started(name, back)

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in _STATIC:
            return PlainTextResponse("not found", status_code=404, headers=HEADERS)
        body = resources.files("strongroom.server").joinpath("static", name).read_bytes()
        return Response(body, media_type=_STATIC[name], headers=HEADERS)

    @router.get("/console/health")
    def health() -> JSONResponse:  # for a load balancer: no session, nothing about the store
        return JSONResponse({"ok": True}, headers=HEADERS)

    return router


def _audit_value(record: object, name: str) -> str:
    value = str(getattr(record, name))
    return "ok" if name == "result" and value == "ok" else ("error" if name == "result" else value)


def _action(service: StoreService, name: str, form: dict[str, str]) -> tuple[Callable[[], object], str]:
    """What an action does (run later, in the background) and the page to return to."""
    from ..errors import UsageError

    store = service.store
    if name == "managed-backup":
        return (lambda: store.managed_backup()), "/backups"
    if name == "rotate-data-keys":
        return (lambda: store.rotate_data_keys()), "/"
    if name == "run-schedule":
        try:
            schedule_id = int(form.get("schedule_id", ""))
        except ValueError:
            raise UsageError("schedule_id: not a schedule id") from None
        service.view().schedules.get(schedule_id)  # an unknown one is refused now, not in the background
        return (lambda: store.schedules.run_now(schedule_id)), "/backups"
    if name == "restore":
        database, new_name = form.get("database", ""), form.get("new_db_name", "").strip()
        subdir, region, as_of_text = form.get("subdir", ""), form.get("region") or None, form.get("as_of", "")
        if not database or not new_name:
            raise UsageError("restore: choose a database and the name to restore it under")
        try:
            as_of = datetime.fromisoformat(as_of_text) if as_of_text else None
        except ValueError:
            raise UsageError(f"as_of {as_of_text!r}: not a timestamp") from None
        return (lambda: store.restore_managed(subdir or "LATEST", [database], new_name, region, as_of)), "/backups"
    raise UsageError(f"unknown action {name!r}")
