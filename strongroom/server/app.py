"""``strongroom serve``: CockroachDB Cloud's CMEK API over one store.

``/api/v1/clusters/{cluster_id}/cmek`` with the store id as cluster id: POST enables CMEK (every
region), PUT rotates (or enables) the regions it names, GET reports, PATCH ``{"action": "REVOKE"}``
revokes. Requests are checked at once (a bad one gets 400 and changes nothing), and so is each key
they name: the KMS must encrypt and decrypt a probe (audited as "check CMEK"), else 400. The change
itself runs in a background thread, so the answer carries the transient status (ENABLING, ROTATING,
REVOKING) that GET keeps showing until it finishes: ENABLED, or a failure status with the reason.
GET lists each region's current key, the key a change asks for (or failed to take) and past keys,
each with its URI as the client sent it. ``GET /api/v1/clusters/{cluster_id}`` is the store as
Cloud's ``Cluster`` (LOCKED while a CMEK change runs). Every error body is Cloud's ``Status``.

Every API request needs ``Authorization: Bearer <token>``, checked on the headers alone before any
of the body is read (a pure ASGI guard in front of FastAPI); bodies are capped at 1 MiB (413). An
OPTIONS request, or a method a path does not have, is 405 with ``Allow`` listing the path's methods:
OPTIONS before authentication (the methods are public in /openapi.json; nothing else is shown), any
other method after it. /openapi.json is public (no /docs: Swagger UI needs a CDN; this server works
offline). KMS calls made for a request are audited as
``api:<first 12 hex of sha256(token)>``, which names the token without revealing it.
"""

import hashlib
import hmac
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import AlreadyExistsError, EncryptionError, KMSError, NotFoundError, StrongroomError, UsageError
from ..kms.cache import DEFAULT_MAX_ENTRIES, enable_key_cache
from ..store import RegionStatus, Store
from ..store.audit import AuditRecord, acting_as
from ..store.keys import ENABLE_FAILED, REVOKE_FAILED, REVOKED, ROTATE_FAILED, CMEKSpec, key_type
from .backups_api import backups_router
from .console import Console
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import metrics_registry
from .metrics import render as render_metrics
from .models import (
    Cluster,
    ClusterOperationStatus,
    ClusterRegion,
    ClusterState,
    CMEKClusterInfo,
    CMEKClusterSpecification,
    CMEKCustomerAction,
    CMEKKeyInfo,
    CMEKKeySpecificationInfo,
    CMEKKeyType,
    CMEKRegionInfo,
    CMEKStatus,
    ErrorBody,
    UpdateCMEKStatusRequest,
    cmek_spec,
)
from .scheduler import Scheduler, safe_message

log = logging.getLogger("strongroom.server")

TRANSIENT = {"enable": "ENABLING", "rotate": "ROTATING", "revoke": "REVOKING"}
FAILED = {"enable": ENABLE_FAILED, "rotate": ROTATE_FAILED, "revoke": REVOKE_FAILED}
# The cluster's status is its regions' most pressing one.
_CLUSTER_STATUS_ORDER = [*TRANSIENT.values(), *FAILED.values(), REVOKED, "ENABLED", "DISABLED"]
_HTTP_STATUS = {UsageError: 400, EncryptionError: 400, NotFoundError: 404, AlreadyExistsError: 409, KMSError: 503}


def actor_of(token: str) -> str:
    return "api:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Operation:
    """A CMEK change running in the background, or the last one."""

    kind: str  # enable | rotate | revoke
    regions: dict[str, str]  # region -> its key spec's updated_at when the operation began
    #: region -> the key asked for, as GET shows it (none for a revoke)
    requested: dict[str, CMEKKeySpecificationInfo] = field(default_factory=dict)
    started: str = field(default_factory=_now)
    done: bool = False
    error: str | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    def failed_unrecorded(self, st: RegionStatus) -> bool:
        """Did this operation fail on the region without the store recording it (such as a KMS
        refusing to unwrap a revoked region's store key)? Shown until the region's keys change."""
        return (
            st.region in self.regions
            and self.done
            and self.error is not None
            and not st.status.endswith("_FAILED")
            and st.updated_at == self.regions[st.region]
        )

    def status_of(self, st: RegionStatus) -> tuple[str, str]:
        """The region's status and message as the API shows them while and after this operation ran."""
        if st.region not in self.regions:
            return st.status, st.user_message
        if not self.done:
            return TRANSIENT[self.kind], ""
        if self.failed_unrecorded(st):
            return FAILED[self.kind], self.error or ""
        return st.status, st.user_message


class StoreService:
    """The store behind the API: one CMEK operation at a time, run in a background thread.

    The open store is shared with the scheduler, so every use of it holds ``lock``. Reads that need
    no key (GET, request checks) use a fresh read-only view instead, so they answer during a change.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        self.lock = threading.Lock()
        self.store = _open(self.path)
        self.operation: Operation | None = None
        self._starting = threading.Lock()

    @property
    def cluster_id(self) -> str:
        return self.store.id

    def view(self) -> Store:
        return Store.open(self.path, unlock=False)

    def info(self) -> CMEKClusterInfo:
        return cluster_info(self.view().encryption_status(), self.operation)

    def cluster(self) -> Cluster:
        view = self.view()
        op = self.operation
        running = op is not None and not op.done
        statuses = view.encryption_status()
        if running:
            operation = ClusterOperationStatus.CRDB_CMEK_OPERATION_RUNNING
        elif any(st.status.endswith("_FAILED") for st in statuses) or (
            op is not None and any(op.failed_unrecorded(st) for st in statuses)
        ):
            operation = ClusterOperationStatus.CRDB_CMEK_OPERATION_FAILED
        else:
            operation = ClusterOperationStatus.UNSPECIFIED
        created = view.meta.doc.get("created")
        return Cluster(
            id=view.id,
            name=self.path.name,
            state=ClusterState.LOCKED if running else ClusterState.CREATED,
            operation_status=operation,
            regions=[ClusterRegion(name=r) for r in view.regions],
            created_at=created if isinstance(created, str) else None,
        )

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the running operation, if any, to finish; False on timeout."""
        op = self.operation
        return op is None or op.finished.wait(timeout)

    def start(
        self,
        kind: str,
        regions: list[str],
        work: Callable[[Store], None],
        actor: str,
        requested: dict[str, CMEKKeySpecificationInfo] | None = None,
    ) -> CMEKClusterInfo:
        """Run ``work`` in the background; returns the cluster info showing it in progress."""
        statuses = self.view().encryption_status()
        since = {st.region: st.updated_at for st in statuses if st.region in regions}
        with self._starting:
            if self.operation is not None and not self.operation.done:
                raise AlreadyExistsError(
                    f"a CMEK {self.operation.kind} is in progress on this cluster; try again when it has finished"
                )
            op = self.operation = Operation(kind, since, requested or {})
        info = cluster_info(statuses, op)  # before the thread starts: it may finish at once
        threading.Thread(target=self._run, args=(op, work, actor), name=f"cmek-{kind}", daemon=True).start()
        return info

    def _run(self, op: Operation, work: Callable[[Store], None], actor: str) -> None:
        try:
            with self.lock, acting_as(actor):
                work(self.store)
        except Exception as exc:  # reported through GET; a thread has no one else to tell
            op.error = safe_message(exc)
            log.warning("CMEK %s failed: %s", op.kind, op.error)
        else:
            log.info("CMEK %s done: %s", op.kind, ", ".join(op.regions))
        finally:
            op.done = True
            op.finished.set()

    # -- the three changes -------------------------------------------------------------------------
    def _checked(self, view: Store, specs: dict[str, CMEKSpec], actor: str, *, every_region: bool = False) -> None:
        """Refuse a change the store would fail: bad regions or URIs, and keys the KMS will not use
        (probed now, so a client learns it from this request's 400 and not from a later GET)."""
        view.check_cmek_specs(specs, every_region=every_region)
        with acting_as(actor):
            view.check_cmek_usable(specs)

    def enable(self, body: CMEKClusterSpecification, actor: str) -> CMEKClusterInfo:
        specs = _specs(body)
        view = self.view()
        self._checked(view, specs, actor, every_region=True)
        return self.start("enable", list(specs), lambda s: s.enable_cmek(specs), actor, _shown(specs))

    def rotate(self, body: CMEKClusterSpecification, actor: str) -> CMEKClusterInfo:
        specs = _specs(body)
        if not specs:
            raise UsageError("region_specs is empty: name each region to rotate")
        view = self.view()
        view.check_cmek_specs(specs)
        # The URI GET shows (redacted) names the current key too: a new version of the same key.
        for region, spec in list(specs.items()):
            current = view.keys.spec_on_disk(region)
            given = spec.given_uri or spec.uri
            if current.cmek and given in (current.shown_uri, current.given_uri or current.key_uri):
                specs[region] = CMEKSpec(current.key_uri, current.given_uri, spec.auth_principal)
        self._checked(view, specs, actor)
        return self.start("rotate", list(specs), lambda s: s.rotate_cmek(specs), actor, _shown(specs))

    def revoke(self, body: UpdateCMEKStatusRequest, actor: str) -> CMEKClusterInfo:
        if body.action != CMEKCustomerAction.REVOKE:
            raise UsageError(f"unknown action {body.action!r}: the only action is REVOKE")
        statuses = self.view().encryption_status()
        if not any(st.cmek for st in statuses):
            raise UsageError("CMEK is not enabled on this cluster: there is nothing to revoke")
        return self.start("revoke", [st.region for st in statuses], Store.revoke_cmek, actor)


def _open(path: Path) -> Store:
    """The store with its keys if they open; else (revoked, KMS down) its status only, so the API
    can still report and re-enable it."""
    try:
        return Store.open(path)
    except (KMSError, EncryptionError) as exc:
        log.warning("the store's keys are locked (%s); serving status and CMEK enable/rotate only", exc)
        return Store.open(path, unlock=False)


def _specs(body: CMEKClusterSpecification) -> dict[str, CMEKSpec]:
    """The request's keys per region, each with its own auth_principal (as in Cloud)."""
    specs: dict[str, CMEKSpec] = {}
    for i, rs in enumerate(body.region_specs):
        if not rs.region:
            raise UsageError(f"region_specs.{i}.region is empty: name the region")
        if rs.region in specs:
            raise UsageError(f'region "{rs.region}" appears more than once in region_specs')
        specs[rs.region] = cmek_spec(rs.key_spec)
    return specs


def _shown(specs: dict[str, CMEKSpec]) -> dict[str, CMEKKeySpecificationInfo]:
    return {r: _spec_info(s.shown, key_type(s.uri), s.auth_principal) for r, s in specs.items() if s.uri}


def _spec_info(uri: str, type_: str, principal: str | None) -> CMEKKeySpecificationInfo:
    return CMEKKeySpecificationInfo(type=CMEKKeyType(type_), uri=uri, auth_principal=principal or "")


def _key_infos(st: RegionStatus, operation: Operation | None) -> list[CMEKKeyInfo]:
    """The region's keys: the current CMEK first (none without CMEK: the local key file is not a
    customer key), then the one a change asks for or failed to take, then past keys, newest first."""
    op = operation if operation is not None and st.region in operation.regions else None
    running = op is not None and not op.done
    unrecorded = op is not None and op.failed_unrecorded(st)
    requested = op.requested.get(st.region) if op is not None else None
    current = _spec_info(st.given_uri, st.key_type, st.auth_principal) if st.cmek else None
    # a revoke, or a new version of the same key, changes the current key itself
    on_current = op is not None and (op.kind == "revoke" or requested == current)
    history = list(st.key_history)
    if running:  # the change under way is the outcome of earlier failed attempts
        history = [k for k in history if not k.status.endswith("_FAILED")]
    infos: list[CMEKKeyInfo] = []
    if current is not None and st.key_since is not None:
        status = st.key_status
        # a failed attempt the store recorded carries its own message; the current key has none
        message = "" if history and history[0].status == st.status != st.key_status else st.user_message
        if op is not None and on_current and running:
            status, message = TRANSIENT[op.kind], ""
        elif op is not None and on_current and unrecorded:
            status, message = FAILED[op.kind], op.error or ""
        infos.append(CMEKKeyInfo(spec=current, status=CMEKStatus(status), created_at=st.key_since,
                                 updated_at=st.updated_at, user_message=message))  # fmt: skip
    if op is not None and requested is not None and not on_current:
        if running:
            infos.append(_requested(requested, TRANSIENT[op.kind], "", op))
        elif unrecorded:
            infos.append(_requested(requested, FAILED[op.kind], op.error or "", op))
    for k in history:
        infos.append(
            CMEKKeyInfo(
                spec=_spec_info(k.uri, k.type, k.auth_principal),
                status=CMEKStatus(k.status),
                created_at=k.created_at,
                updated_at=k.updated_at,
                user_message=k.user_message,
            )
        )
    return infos


def _requested(spec: CMEKKeySpecificationInfo, status: str, message: str, op: Operation) -> CMEKKeyInfo:
    return CMEKKeyInfo(spec=spec, status=CMEKStatus(status), created_at=op.started, updated_at=op.started,
                       user_message=message)  # fmt: skip


def cluster_info(statuses: list[RegionStatus], operation: Operation | None) -> CMEKClusterInfo:
    regions = []
    for st in statuses:
        status, _message = operation.status_of(st) if operation else (st.status, st.user_message)
        regions.append(CMEKRegionInfo(region=st.region, status=CMEKStatus(status), key_infos=_key_infos(st, operation)))
    present = {r.status for r in regions}
    status = next((s for s in _CLUSTER_STATUS_ORDER if s in present), "DISABLED")
    return CMEKClusterInfo(status=CMEKStatus(status), region_infos=regions)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """Cloud's ``Status`` body, for every error."""
    return JSONResponse(ErrorBody(code=status, message=message).model_dump(), status_code=status, headers=headers)


PROTECTED = ("/api/", "/metrics")  # paths that take the bearer token (Prometheus sends one too)
MAX_BODY = 1 << 20  # 1 MiB: the largest CMEK request is a few KiB
MISSING_TOKEN = "missing API token: send Authorization: Bearer <token>"


class Guard:
    """Authentication, method and size checks before FastAPI reads (parses, validates) any body.

    Under /api/: OPTIONS is 405 with Allow at once; everything else needs the bearer token (401
    otherwise, from the headers alone); then a method the path lacks is 405 with Allow. Every request:
    a Content-Length over ``max_body`` is 413 at once; a body of unknown length is read up to
    ``max_body`` (413 beyond, without reading further) and handed on whole.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: bytes,
        routes: list[Any],
        max_body: int = MAX_BODY,
        console: Callable[[Scope], JSONResponse | None] | None = None,
    ) -> None:
        self.app, self.token, self.routes, self.max_body = app, token, routes, max_body
        self.console = console  # the console's own check of its session cookie, from the headers alone

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope)
        if refusal is None:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and not length.strip().isdigit():
                refusal = _error(400, "invalid Content-Length")
            elif length is not None and int(length) > self.max_body:
                refusal = self.too_large()
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            size += len(message.get("body", b""))
            if size > self.max_body:
                await self.too_large()(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal body
            if body is not None:
                message, body = body, None
                return message
            return await receive()

        await self.app(scope, replay, send)

    def too_large(self) -> JSONResponse:
        return _error(413, f"the request body is larger than {self.max_body} bytes", {"Connection": "close"})

    def check(self, scope: Scope) -> JSONResponse | None:
        if not scope["path"].startswith(PROTECTED):
            return self.console(scope) if self.console is not None else None
        method = scope["method"]
        allowed = self.allowed(scope)
        if method == "OPTIONS" and allowed:
            return self.not_allowed(method, allowed)
        headers = dict(scope["headers"])
        scheme, _, credentials = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return _error(401, MISSING_TOKEN, {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.strip().encode("latin-1"), self.token):
            return _error(401, "invalid API token", {"WWW-Authenticate": "Bearer"})
        if allowed and method not in allowed:
            return self.not_allowed(method, allowed)
        return None

    def allowed(self, scope: Scope) -> list[str]:
        """Every method of the routes whose path matches (empty: no such path)."""
        methods: set[str] = set()
        for route in self.routes:
            if isinstance(route, Route) and route.methods and route.matches(scope)[0] != Match.NONE:
                methods |= route.methods
        order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        return sorted(methods, key=lambda m: (order.index(m) if m in order else len(order), m))

    @staticmethod
    def not_allowed(method: str, allowed: list[str]) -> JSONResponse:
        listed = ", ".join(allowed)
        return _error(405, f"method {method} is not allowed here; allowed: {listed}", {"Allow": listed})


def create_app(
    store_path: str | Path,
    token: str,
    *,
    schedule_interval: float | None = None,
    key_cache_ttl: float = 0,
    key_cache_size: int = DEFAULT_MAX_ENTRIES,
) -> FastAPI:
    """The API over the store at ``store_path``, for bearers of ``token``; with ``schedule_interval``
    (seconds) the scheduler runs while the app does; with ``key_cache_ttl`` (seconds) unwrapped keys
    are cached that long (kms/cache.py)."""
    if not token:
        raise UsageError("the API token is empty")
    if key_cache_ttl > 0:
        enable_key_cache(key_cache_ttl, key_cache_size)
    service = StoreService(store_path)
    expected, actor = token.encode(), actor_of(token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler = Scheduler(service, schedule_interval) if schedule_interval else None
        if scheduler is not None:
            scheduler.start()
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.stop()
            service.wait()  # a CMEK change in progress finishes before the process exits

    app = FastAPI(
        docs_url=None,  # Swagger UI loads from a CDN: blank offline, so not served (see /openapi.json)
        redoc_url=None,
        title="Strongroom CMEK API",
        version="1",
        description=__doc__,
        lifespan=lifespan,
        # Cloud's error body for every client error (a bad body is 400, never FastAPI's 422)
        responses={
            "4XX": {"model": ErrorBody, "description": "A client error"},
            "5XX": {"model": ErrorBody, "description": "A server error (or a KMS that cannot be reached)"},
        },
    )
    app.state.service = service
    bearer = HTTPBearer(auto_error=False, description="The API token (see strongroom serve --help)")

    def authenticate(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        if credentials is None:
            raise HTTPException(401, "missing API token: send Authorization: Bearer <token>")
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(401, "invalid API token")
        return actor

    def cluster(cluster_id: str, who: Annotated[str, Depends(authenticate)]) -> str:
        if cluster_id != service.cluster_id:
            raise NotFoundError(f'cluster "{cluster_id}" not found')
        return who

    Actor = Annotated[str, Depends(cluster)]
    cmek = "/api/v1/clusters/{cluster_id}/cmek"

    @app.exception_handler(StrongroomError)
    async def strongroom_error(request: Request, exc: StrongroomError) -> JSONResponse:
        status = next((code for cls, code in _HTTP_STATUS.items() if isinstance(exc, cls)), 500)
        return _error(status, str(exc))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Cloud's Status body here too (clients parse every error as one); the name of the error
        # only, as its text may come from a library that echoes what it was given.
        log.error("unexpected error in %s %s: %s", request.method, request.url.path, safe_message(exc))
        return _error(500, f"internal error ({type(exc).__name__}); see the server's log")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else exc.headers
        return _error(exc.status_code, str(exc.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        # loc and msg only: pydantic's "input" would echo the request, credentials and all.
        problems = [
            ".".join(str(p) for p in e["loc"] if p != "body")
            + (": unknown field" if e["type"] == "extra_forbidden" else f": {e['msg']}")
            for e in exc.errors()
        ]
        return _error(400, "invalid request: " + "; ".join(problems))

    @app.post(cmek, response_model=CMEKClusterInfo, summary="Enable CMEK (every region)")
    def enable_cmek(body: CMEKClusterSpecification, who: Actor) -> CMEKClusterInfo:
        return service.enable(body, who)

    @app.put(cmek, response_model=CMEKClusterInfo, summary="Rotate (or enable) CMEK of regions")
    def rotate_cmek(body: CMEKClusterSpecification, who: Actor) -> CMEKClusterInfo:
        return service.rotate(body, who)

    @app.get("/api/v1/clusters/{cluster_id}", response_model=Cluster, summary="The cluster (the store)")
    def get_cluster(who: Actor) -> Cluster:
        return service.cluster()

    @app.get(cmek, response_model=CMEKClusterInfo, summary="CMEK status")
    def get_cmek(who: Actor) -> CMEKClusterInfo:
        return service.info()

    @app.patch(cmek, response_model=CMEKClusterInfo, summary="Revoke CMEK")
    def revoke_cmek(body: UpdateCMEKStatusRequest, who: Actor) -> CMEKClusterInfo:
        return service.revoke(body, who)

    @app.get(cmek + "/audit", response_model=list[AuditRecord], summary="Every use of the store's keys")
    def audit(who: Actor, limit: Annotated[int | None, Query(ge=1)] = None) -> list[AuditRecord]:
        records = service.view().audit_records()
        return records[-limit:] if limit else records

    @app.get(
        "/api/v1/clusters/{cluster_id}/encryption-status",
        response_model=list[RegionStatus],
        summary="Which keys protect what, per region",
    )
    def encryption_status(who: Actor) -> list[RegionStatus]:
        with service.lock, acting_as(who):
            return service.store.encryption_status()

    app.include_router(backups_router(service, cluster))
    registry = metrics_registry(service)

    @app.get("/metrics", include_in_schema=False)
    def metrics(who: Annotated[str, Depends(authenticate)]) -> Response:
        return Response(render_metrics(registry), media_type=METRICS_CONTENT_TYPE)

    console = Console(service, expected, actor)
    app.include_router(console.router)
    app.add_middleware(Guard, token=expected, routes=app.router.routes, console=console.guard)
    return app
