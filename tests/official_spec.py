"""Every request and response checked against CockroachDB Cloud's official API specification
(a copy in ``tests/reference/``, Apache-2.0; see its README), with ``openapi-core``.

``validated(client)`` hooks an httpx client (a FastAPI TestClient is one) so that each call it makes,
and the answer it gets, must validate; a path the official API does not have is reported too, so a
test cannot pass by calling something official clients never would.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

SPEC = Path(__file__).resolve().parent / "reference" / "cockroach-cloud-openapi.json"
SPEC_SHA256 = "5b3fb66a14be96a292c8583dccc24a89cd7f2053d0414f90b6335c837bd8e5ba"
OFFICIAL_HOST = "https://cockroachlabs.cloud"


@functools.cache
def official() -> OpenAPI:
    assert hashlib.sha256(SPEC.read_bytes()).hexdigest() == SPEC_SHA256, f"{SPEC} is not the published file"
    return OpenAPI.from_file_path(str(SPEC))


def check(response: httpx.Response) -> None:
    """Raise if the request or the response of ``response`` breaks the official specification."""
    request = response.request
    response.read()
    body = request.content or None
    mock_request = MockRequest(
        OFFICIAL_HOST,
        request.method.lower(),
        request.url.path,
        args=dict(parse_qsl(request.url.query.decode())),
        headers=dict(request.headers),
        data=body,
        content_type=request.headers.get("content-type", "application/json").split(";")[0],
    )
    mock_response = MockResponse(
        data=response.content,
        status_code=response.status_code,
        content_type=response.headers.get("content-type", "application/json").split(";")[0],
    )
    if response.status_code < 400:  # a refused request is refused whatever it is; its answer must still validate
        official().validate_request(mock_request)
    official().validate_response(mock_request, mock_response)


def validated(client: httpx.Client) -> httpx.Client:
    client.event_hooks["response"].append(check)
    return client
