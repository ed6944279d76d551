"""Google Cloud KMS: ``gs:///projects/.../cryptoKeys/<key>?...`` and ``gcp-kms:///...`` (CockroachDB's gcp_kms.go).

The master key id is the CryptoKey resource name without a leading ``/`` and without any
``/cryptoKeyVersions/...`` suffix (Decrypt only accepts a CryptoKey; GCP picks the version from the blob).
Encrypt and Decrypt send CRC32C checksums and verify the ones that come back, with CockroachDB's
messages (``Encrypt: request corrupted in-transit`` and so on).

Parameters: ``AUTH`` (``specified``, the default, or ``implicit``: Application Default Credentials),
``CREDENTIALS`` (base64 of a credentials JSON such as a service-account key), ``BEARER_TOKEN`` (an OAuth
access token) and the Strongroom extension ``GCP_ENDPOINT`` (a private or test endpoint such as
``https://kms.example.internal`` or ``http://127.0.0.1:8089``; like AWS_ENDPOINT, it does not change the
key's identity). ``ASSUME_ROLE`` (impersonation) is not supported yet and is refused clearly.

google-cloud-kms is imported on first use so ``import strongroom`` works without the ``[gcp]`` extra.
"""

from __future__ import annotations

import threading
from typing import Any

from ..cloud.extras import import_extra
from ..cloud.gcp import GcpAuth
from ..cloud.scrub import scrub
from ..errors import KMSError, NotFoundError, UsageError
from ..uri import parse_uri
from .base import register_kms

SCHEMES = ("gs", "gcp-kms")
PARAMS = ("AUTH", "CREDENTIALS", "BEARER_TOKEN", "ASSUME_ROLE", "GCP_ENDPOINT")
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
EMPTY_PATH = "path component of the KMS cannot be empty; must contain the Customer Managed Key"
# Per-call deadline and retry budget: a KMS outage must fail a backup within seconds, not the
# library's default minute of retries.
_TIMEOUT, _RETRY_DEADLINE = 20.0, 20.0


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


class GcpKMS:
    """One Cloud KMS CryptoKey, opened from a URI; no network call until the first encrypt/decrypt."""

    def __init__(self, uri: str) -> None:
        parsed = parse_uri(uri)
        parsed.check_params(PARAMS)
        p = parsed.params
        name = parsed.path.lstrip("/")
        if not name:
            raise UsageError(EMPTY_PATH)
        if parsed.host:
            raise UsageError(f"GCP KMS URI must look like {parsed.scheme}:///projects/.../cryptoKeys/<key>")
        self._name = name.split("/cryptoKeyVersions/", 1)[0].rstrip("/")
        self._uri = uri
        self._endpoint = p.get("GCP_ENDPOINT") or None
        self._auth = GcpAuth.from_params(p)
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"GcpKMS(key={self._name!r})"

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def master_key_id(self) -> str:
        return self._name

    def _creds(self) -> Any:
        from google.auth import exceptions as gae

        try:
            return self._auth.credentials(SCOPES)
        except (gae.DefaultCredentialsError, ValueError) as exc:
            raise KMSError(f'GCP KMS key "{self._name}": cannot load credentials: {scrub(str(exc))}') from None

    def _kms(self) -> Any:
        with self._lock:
            if self._client is None:
                kms_v1 = import_extra("google.cloud.kms_v1", "gcp", "gs:// KMS")
                rest = import_extra(
                    "google.cloud.kms_v1.services.key_management_service.transports.rest", "gcp", "gs:// KMS"
                )
                # We build the REST transport ourselves: the client's default makes service accounts sign
                # their own JWTs, whereas CockroachDB (and private endpoints) use the OAuth token flow.
                kwargs: dict[str, Any] = {"credentials": self._creds()}
                if self._endpoint:
                    kwargs["host"] = self._endpoint
                self._client = kms_v1.KeyManagementServiceClient(
                    transport=rest.KeyManagementServiceRestTransport(**kwargs)
                )
            return self._client

    def _call(self, op: str, request: dict[str, Any]) -> Any:
        client = self._kms()  # first: it names the missing extra before google.api_core is imported
        from google.api_core import exceptions as gexc
        from google.api_core import retry as gretry
        from google.auth import exceptions as gae

        where = f'GCP KMS key "{self._name}"'
        retry = gretry.Retry(
            predicate=gretry.if_exception_type(gexc.ServiceUnavailable, gexc.DeadlineExceeded),
            initial=0.2,
            maximum=2.0,
            timeout=_RETRY_DEADLINE,
        )
        try:
            method = client.encrypt if op == "Encrypt" else client.decrypt
            return method(request=request, retry=retry, timeout=_TIMEOUT)
        except gexc.NotFound as exc:
            raise NotFoundError(f"{where}: failed to {op.lower()}: NOT_FOUND: {_status(exc)[1]}") from None
        except gexc.GoogleAPICallError as exc:
            status, message = _status(exc)
            raise KMSError(f"{where}: failed to {op.lower()}: {status}: {message}") from None
        except gexc.RetryError:
            raise KMSError(f"{where}: {op}: KMS unavailable (gave up after {_RETRY_DEADLINE:.0f}s)") from None
        except gae.GoogleAuthError as exc:
            raise KMSError(f"{where}: {op}: cannot get an access token: {type(exc).__name__}") from None
        except OSError as exc:  # requests' ConnectionError and timeouts are OSErrors
            raise KMSError(f"{where}: {op}: KMS unreachable: {type(exc).__name__}") from None

    def encrypt(self, plaintext: bytes) -> bytes:
        resp = self._call(
            "Encrypt", {"name": self._name, "plaintext": plaintext, "plaintext_crc32c": _crc32c(plaintext)}
        )
        if not resp.verified_plaintext_crc32c:
            raise KMSError("Encrypt: request corrupted in-transit")
        ciphertext = bytes(resp.ciphertext)
        if resp.ciphertext_crc32c is None or _crc32c(ciphertext) != int(resp.ciphertext_crc32c):
            raise KMSError("Encrypt: response corrupted in-transit")
        return ciphertext

    def decrypt(self, ciphertext: bytes) -> bytes:
        request = {"name": self._name, "ciphertext": ciphertext, "ciphertext_crc32c": _crc32c(ciphertext)}
        resp = self._call("Decrypt", request)
        plaintext = bytes(resp.plaintext)
        if resp.plaintext_crc32c is None or _crc32c(plaintext) != int(resp.plaintext_crc32c):
            raise KMSError("Decrypt: response corrupted in-transit")
        return plaintext

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.transport.close()
                self._client = None


def _status(exc: Any) -> tuple[str, str]:
    """The google.rpc status (FAILED_PRECONDITION...) and message of an API error, from the JSON body.

    api_core's own message starts with the request's method and URL, which says nothing useful here.
    """
    response = getattr(exc, "response", None)
    try:
        error = response.json().get("error", {}) if response is not None else {}
    except (ValueError, AttributeError):
        error = {}
    code = getattr(exc, "grpc_status_code", None)
    status = error.get("status") or (code.name if code is not None else type(exc).__name__)
    return str(status), str(error.get("message") or exc.message)


for _scheme in SCHEMES:
    register_kms(_scheme, GcpKMS)
