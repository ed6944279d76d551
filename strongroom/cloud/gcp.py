"""Google Cloud credentials from URI parameters, one decoder and one policy for GCS storage and Cloud KMS.

``AUTH`` is ``specified`` (the default: ``CREDENTIALS``, a base64 JSON key file, or ``BEARER_TOKEN``) or
``implicit`` (google-auth's application default credentials). Only ``service_account`` and
``authorized_user`` key files are accepted: an ``external_account`` config can name any token or
credential-source URL, so loading one could make this process fetch arbitrary URLs.
``ASSUME_ROLE`` (service-account impersonation) is not supported yet.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from .scrub import register_secret

AUTH_SPECIFIED, AUTH_IMPLICIT = "specified", "implicit"
ALLOWED_TYPES = ("service_account", "authorized_user")
ASSUME_ROLE_UNSUPPORTED = "ASSUME_ROLE is not supported for Google Cloud in Strongroom yet"
MISSING_CREDENTIALS = f'CREDENTIALS or BEARER_TOKEN must be set if "AUTH" is "{AUTH_SPECIFIED}"'


def refused_type_message(kind: object) -> str:
    return f"CREDENTIALS of type {kind!r} are not supported (use a service_account or authorized_user JSON)"


def decode_credentials(value: str) -> dict[str, Any]:
    """The JSON key file in ``CREDENTIALS``; the message never quotes the value (it is the private key)."""
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


@dataclass(frozen=True)
class GcpAuth:
    """Checked Google credentials settings; :meth:`credentials` builds the google-auth object."""

    auth: str
    info: dict[str, Any] | None = None
    bearer_token: str = ""
    secrets: tuple[str, ...] = field(default=())

    @classmethod
    def from_params(cls, params: dict[str, str]) -> GcpAuth:
        auth = params.get("AUTH", "") or AUTH_SPECIFIED
        if params.get("ASSUME_ROLE"):
            raise UsageError(ASSUME_ROLE_UNSUPPORTED)
        encoded, token = params.get("CREDENTIALS", ""), params.get("BEARER_TOKEN", "")
        if auth == AUTH_SPECIFIED:
            if not encoded and not token:
                raise UsageError(MISSING_CREDENTIALS)
        elif auth != AUTH_IMPLICIT:
            raise UsageError(f"unsupported value {auth} for AUTH")
        info = decode_credentials(encoded) if encoded and auth == AUTH_SPECIFIED else None
        if info is not None and info.get("type") not in ALLOWED_TYPES:
            raise UsageError(refused_type_message(info.get("type")))
        secrets = tuple(s for s in (encoded, token, str((info or {}).get("private_key", ""))) if s)
        for secret in secrets:
            register_secret(secret)
        return cls(auth, info, token, secrets)

    def credentials(self, scopes: Sequence[str]) -> Any:
        """google-auth credentials; google-auth's own exceptions propagate for the caller to translate."""
        if self.auth == AUTH_IMPLICIT:
            import google.auth

            creds, _project = google.auth.default(scopes=list(scopes))
            return creds
        if self.info is not None:
            if self.info.get("type") == "service_account":
                from google.oauth2 import service_account

                return service_account.Credentials.from_service_account_info(self.info, scopes=list(scopes))
            from google.oauth2 import credentials as user_credentials

            return user_credentials.Credentials.from_authorized_user_info(self.info, scopes=list(scopes))
        from google.oauth2.credentials import Credentials

        return Credentials(token=self.bearer_token)
