"""Checks HTTP exchanges against CockroachDB Cloud's published API specification, and our own.

A client generated from CockroachDB Cloud's ``cockroach-cloud-openapi.json`` (a copy in
``tests/reference/``, Apache-2.0, checked against its published SHA-256) must work against
``strongroom serve`` unchanged, so every request a test sends and every answer it gets are checked
with openapi-core against that file (and against the server's own ``/openapi.json``):

- every response of an operation the official spec has must be one of its responses (error bodies
  are its ``Status``);
- a request the server accepted (2xx) must be one an official client could send.

Two relaxations, both documented in strongroom/server/models.py:

- Strongroom's additions to ``CMEKKeyType`` (LOCAL_KEY_FILE, PKCS11_HSM, HASHICORP_VAULT), only for an exchange that
  uses one of those values: a store whose CMEKs are all of the official types is checked against
  the official enums as published;
- ``Cluster`` fields Cloud marks required that have no true value for a store (UNTRUE_FOR_A_STORE):
  they are left out rather than filled with a lie.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from werkzeug.datastructures import Headers

from strongroom.server.models import OUR_KEY_TYPES

SPEC_PATH = Path(__file__).resolve().parent / "reference" / "cockroach-cloud-openapi.json"
SPEC_SHA256 = "5b3fb66a14be96a292c8583dccc24a89cd7f2053d0414f90b6335c837bd8e5ba"
OFFICIAL_HOST = "https://cockroachlabs.cloud"


@cache
def official_document() -> dict[str, Any]:
    data = SPEC_PATH.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SPEC_SHA256, f"{SPEC_PATH} is not the published file"
    return json.loads(data)  # type: ignore[no-any-return]


#: Required in Cloud's schema, and enums none of whose values is true of a store (see models.Cluster).
UNTRUE_FOR_A_STORE = {"Cluster": ("plan", "cloud_provider", "upgrade_status")}


@cache
def official(with_our_key_types: bool = False) -> OpenAPI:
    doc = copy.deepcopy(official_document())
    schemas = doc["components"]["schemas"]
    for name, fields in UNTRUE_FOR_A_STORE.items():
        schemas[name]["required"] = [f for f in schemas[name]["required"] if f not in fields]
    if with_our_key_types:
        schemas["CMEKKeyType"]["enum"] += list(OUR_KEY_TYPES)
    return OpenAPI.from_dict(doc)


def ours(document: dict[str, Any]) -> OpenAPI:
    doc = copy.deepcopy(document)
    doc["servers"] = [{"url": OFFICIAL_HOST}]
    return OpenAPI.from_dict(doc)


def uses_our_key_types(*bodies: bytes) -> bool:
    return any(f'"{t}"'.encode() in body for body in bodies for t in OUR_KEY_TYPES)


@dataclass
class _Request:
    """openapi-core's request protocol over an httpx request, as if sent to Cloud's host."""

    method: str
    path: str
    parameters: RequestParameters
    body: bytes | None
    content_type: str
    host_url: str = OFFICIAL_HOST


@dataclass
class _Response:
    status_code: int
    data: bytes
    headers: dict[str, str]
    content_type: str


def _body(request: httpx.Request) -> bytes:
    """The request's body; b"" for one streamed in chunks (never held whole: only its answer is checked)."""
    try:
        return request.content
    except httpx.RequestNotRead:
        return b""


def _as_request(request: httpx.Request) -> _Request:
    body = _body(request) or None
    return _Request(
        method=request.method.lower(),
        path=request.url.path,
        parameters=RequestParameters(
            query=dict(parse_qsl(request.url.query.decode())),
            header=Headers(list(request.headers.items())),  # case-insensitive, as HTTP headers are
        ),
        body=body,
        content_type=request.headers.get("content-type", "application/json").lower(),
    )


def _as_response(response: httpx.Response) -> _Response:
    return _Response(
        status_code=response.status_code,
        data=response.content,
        headers=dict(response.headers),
        content_type=response.headers.get("content-type", "application/json").lower(),
    )


class SpecViolation(AssertionError):
    pass


def _validate(spec: OpenAPI, name: str, request: httpx.Request, response: httpx.Response) -> bool:
    """Raises SpecViolation when the exchange breaks ``spec``; False if the spec has no such operation."""
    req, resp = _as_request(request), _as_response(response)
    try:
        spec.validate_response(req, resp)  # type: ignore[arg-type]
    except (PathNotFound, OperationNotFound):
        return False
    except Exception as exc:
        raise SpecViolation(
            f"{name}: response {request.method} {request.url.path} -> {response.status_code}: "
            f"{_detail(exc)}\n{response.text[:2000]}"
        ) from None
    if 200 <= response.status_code < 300:
        try:
            spec.validate_request(req)  # type: ignore[arg-type]
        except Exception as exc:
            raise SpecViolation(
                f"{name}: request {request.method} {request.url.path} was accepted but breaks "
                f"the spec: {_detail(exc)}\n{_body(request)[:2000]!r}"
            ) from None
    return True


def _detail(exc: BaseException) -> str:
    parts = [f"{type(exc).__name__}: {exc}"]
    for sub in getattr(exc, "schema_errors", None) or getattr(exc, "errors", None) or []:
        parts.append(f"  {getattr(sub, 'message', sub)}")
    if exc.__cause__ is not None:
        parts.append(_detail(exc.__cause__))
    return "\n".join(parts)


def check_official(request: httpx.Request, response: httpx.Response) -> bool:
    """Check one exchange against the official spec; False if it has no such operation (ours only)."""
    relaxed = uses_our_key_types(_body(request), response.content)
    return _validate(official(relaxed), "official spec" + (" + our key types" if relaxed else ""), request, response)


def checking_hook(served_document: Callable[[], dict[str, Any]]) -> Callable[[httpx.Response], None]:
    """An httpx response hook checking every exchange against both specs."""
    served: list[OpenAPI] = []

    def hook(response: httpx.Response) -> None:
        response.read()
        request = response.request
        if request.url.path in ("/openapi.json", "/docs"):
            return
        check_official(request, response)
        if not served:
            served.append(ours(served_document()))
        _validate(served[0], "served /openapi.json", request, response)

    return hook
