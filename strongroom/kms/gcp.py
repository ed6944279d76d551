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

import base64
import binascii
import json
import threading
from typing import Any

from ..errors import KMSError, NotFoundError, UsageError
from ..uri import parse_uri
from .base import register_kms

SCHEMES = ("gs", "gcp-kms")
PARAMS = ("AUTH", "CREDENTIALS", "BEARER_TOKEN", "ASSUME_ROLE", "GCP_ENDPOINT")
AUTH_SPECIFIED, AUTH_IMPLICIT = "specified", "implicit"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
EMPTY_PATH = "path component of the KMS cannot be empty; must contain the Customer Managed Key"
# Per-call deadline and retry budget: a KMS outage must fail a backup within seconds, not the
# library's default minute of retries.
_TIMEOUT, _RETRY_DEADLINE = 20.0, 20.0


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


def _decode_credentials(value: str) -> dict[str, Any]:
    # '+' in unencoded base64 arrives as ' ' after query decoding; padding may have been dropped.
    text = value.replace(" ", "+").strip()
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, altchars=b"-_" if ("-" in text or "_" in text) else None, validate=True)
        info = json.loads(raw)
    except (binascii.Error, ValueError):
        raise UsageError("decoding value of CREDENTIALS: not base64 of a credentials JSON") from None
    if not isinstance(info, dict):
        raise UsageError("decoding value of CREDENTIALS: not a credentials JSON object")
    return info


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
        self._auth = p.get("AUTH", "") or AUTH_SPECIFIED
        self._credentials = p.get("CREDENTIALS", "")
        self._bearer = p.get("BEARER_TOKEN", "")
        self._endpoint = p.get("GCP_ENDPOINT") or None
        if p.get("ASSUME_ROLE"):
            raise UsageError("ASSUME_ROLE is not supported for gs:// KMS in Strongroom yet")
        if self._auth == AUTH_SPECIFIED:
            if not self._credentials and not self._bearer:
                raise UsageError(f'CREDENTIALS or BEARER_TOKEN must be set if "AUTH" is "{AUTH_SPECIFIED}"')
        elif self._auth != AUTH_IMPLICIT:
            raise UsageError(f"unsupported value {self._auth} for AUTH")
        self._info = _decode_credentials(self._credentials) if self._credentials else None
        if self._info is not None and self._info.get("type") not in ("service_account", "authorized_user"):
            raise UsageError(
                f"CREDENTIALS of type {self._info.get('type')!r} are not supported "
                "(use a service_account or authorized_user JSON)"
            )
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
        import google.auth
        from google.auth import exceptions as gae

        try:
            if self._auth == AUTH_IMPLICIT:
                creds, _project = google.auth.default(scopes=SCOPES)
                return creds
            if self._info is not None:
                return self._from_info(self._info)
        except (gae.DefaultCredentialsError, ValueError) as exc:
            raise KMSError(f'GCP KMS key "{self._name}": cannot load credentials: {exc}') from None
        from google.oauth2.credentials import Credentials

        return Credentials(token=self._bearer)

    @staticmethod
    def _from_info(info: dict[str, Any]) -> Any:
        # Only key types that cannot make us fetch arbitrary URLs: external_account configs can name any
        # token or credential-source URL, which is why google-auth deprecated loading arbitrary JSON.
        kind = info.get("type")
        if kind == "service_account":
            from google.oauth2 import service_account

            return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
        if kind == "authorized_user":
            from google.oauth2 import credentials

            return credentials.Credentials.from_authorized_user_info(info, scopes=SCOPES)
        raise UsageError(f"CREDENTIALS of type {kind!r} are not supported")  # refused in __init__ already

    def _kms(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    from google.cloud.kms_v1 import KeyManagementServiceClient
                    from google.cloud.kms_v1.services.key_management_service.transports.rest import (
                        KeyManagementServiceRestTransport,
                    )
                except ImportError:
                    raise UsageError("gs:// KMS needs google-cloud-kms: pip install 'strongroom[gcp]'") from None
                # We build the REST transport ourselves: the client's default makes service accounts sign
                # their own JWTs, whereas CockroachDB (and private endpoints) use the OAuth token flow.
                kwargs: dict[str, Any] = {"credentials": self._creds()}
                if self._endpoint:
                    kwargs["host"] = self._endpoint
                self._client = KeyManagementServiceClient(transport=KeyManagementServiceRestTransport(**kwargs))
            return self._client

    def _call(self, op: str, request: dict[str, Any]) -> Any:
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
        client = self._kms()
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
