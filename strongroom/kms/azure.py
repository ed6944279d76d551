"""Azure Key Vault keys: ``azure-kms:///<key-name>/<key-version>?AZURE_VAULT_NAME=...`` (CockroachDB's azure_kms.go).

The data key is wrapped with RSA-OAEP-256 (Key Vault ``encrypt``/``decrypt``; the SDK may do the
public-key half locally once it has read the key). The master key id is the key *name* only, so a
new key version still matches backups wrapped by an older version of the same key.

Parameters: ``AZURE_VAULT_NAME`` (required unless ``AZURE_VAULT_URL`` is given), ``AZURE_CLIENT_ID``,
``AZURE_CLIENT_SECRET``, ``AZURE_TENANT_ID``, ``AZURE_ENVIRONMENT`` (``AzurePublicCloud`` by default) and
``AUTH`` (``specified``/``explicit``, the default, or ``implicit``: azure-identity's
DefaultAzureCredential). Strongroom extensions for private endpoints: ``AZURE_VAULT_URL`` (the vault's
base URL, replacing the name-derived one) and ``AZURE_AUTHORITY_HOST`` (the Entra ID authority).
The SDK is imported on first use so ``import strongroom`` works without the ``[azure]`` extra.
"""

from __future__ import annotations

import threading
from typing import Any

from ..cloud.azure import AzureAuth, azure_environment
from ..cloud.extras import import_extra
from ..cloud.scrub import scrub
from ..errors import KMSError, NotFoundError, UsageError
from ..uri import parse_uri
from .base import register_kms

SCHEME = "azure-kms"
PARAMS = (
    "AZURE_VAULT_NAME",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_ENVIRONMENT",
    "AUTH",
    "AZURE_VAULT_URL",
    "AZURE_AUTHORITY_HOST",
)
KEY_FORM = "azure kms key must be of form 'id/version'"


class AzureKMS:
    """One Key Vault RSA key version, opened from a URI; no network call until first encrypt/decrypt."""

    def __init__(self, uri: str) -> None:
        parsed = parse_uri(uri)
        parsed.check_params(PARAMS)
        p = parsed.params
        parts = parsed.path.strip("/").split("/")
        if parsed.host or len(parts) != 2 or not all(parts):
            raise UsageError(KEY_FORM)
        self._name, self._version = parts
        self._uri = uri
        cloud = azure_environment(p)
        vault = p.get("AZURE_VAULT_NAME", "")
        self._vault_url = (p.get("AZURE_VAULT_URL") or "").rstrip("/")
        self._custom_vault = bool(self._vault_url)
        if not self._vault_url:
            if not vault:
                raise UsageError("azure kms AZURE_VAULT_NAME parameter not specified")
            self._vault_url = f"https://{vault}.{cloud.vault_suffix}"
        self._authority = p.get("AZURE_AUTHORITY_HOST") or cloud.authority_host
        self._auth = AzureAuth.from_params(p, account_key_allowed=False)
        self._client: Any = None
        self._credential: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AzureKMS(key={self._name!r}, version={self._version!r}, vault={self._vault_url!r})"

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def master_key_id(self) -> str:
        return self._name

    def _crypto(self) -> Any:
        with self._lock:
            if self._client is None:
                identity = import_extra("azure.identity", "azure", "azure-kms://")
                crypto = import_extra("azure.keyvault.keys.crypto", "azure", "azure-kms://")
                host = self._authority if "://" in self._authority else f"https://{self._authority}"
                if self._auth.implicit:
                    self._credential = identity.DefaultAzureCredential(authority=host, retry_total=1)
                else:
                    # A private authority is not in Microsoft's instance list, so skip that look-up.
                    self._credential = identity.ClientSecretCredential(
                        self._auth.tenant_id,
                        self._auth.client_id,
                        self._auth.client_secret,
                        authority=host,
                        disable_instance_discovery=host != "https://login.microsoftonline.com",
                        retry_total=1,  # an unreachable authority must fail in seconds, not ten
                    )
                self._client = crypto.CryptographyClient(
                    f"{self._vault_url}/keys/{self._name}/{self._version}",
                    self._credential,
                    # The challenge names the vault's resource; a private vault URL cannot match it.
                    verify_challenge_resource=not self._custom_vault,
                    retry_total=1,
                    connection_timeout=5,
                    read_timeout=20,
                )
            return self._client

    def _call(self, op: str, fn: Any) -> Any:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
        )

        where = f'Azure key "{self._name}/{self._version}" in {self._vault_url}'
        try:
            return fn(self._crypto())
        except ResourceNotFoundError as exc:
            raise NotFoundError(f"{where}: {op}: {scrub(_error_text(exc), self._auth.secrets)}") from None
        except ClientAuthenticationError as exc:
            if _caused_by(exc, ServiceRequestError):
                raise KMSError(
                    f"{where}: {op}: KMS unreachable: cannot reach the authority {self._authority}"
                ) from None
            raise KMSError(
                f"{where}: {op}: authentication failed: {scrub(_error_text(exc), self._auth.secrets)}"
            ) from None
        except HttpResponseError as exc:
            raise KMSError(f"{where}: {op}: {scrub(_error_text(exc), self._auth.secrets)}") from None
        except ServiceRequestError as exc:
            raise KMSError(f"{where}: {op}: KMS unreachable: {type(exc).__name__}") from None
        except ValueError as exc:  # the SDK's own checks, e.g. a key that cannot encrypt
            raise KMSError(f"{where}: {op}: {scrub(str(exc), self._auth.secrets)}") from None

    def encrypt(self, plaintext: bytes) -> bytes:
        from azure.keyvault.keys.crypto import EncryptionAlgorithm

        return bytes(self._call("encrypt", lambda c: c.encrypt(EncryptionAlgorithm.rsa_oaep_256, plaintext)).ciphertext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        from azure.keyvault.keys.crypto import EncryptionAlgorithm

        return bytes(self._call("decrypt", lambda c: c.decrypt(EncryptionAlgorithm.rsa_oaep_256, ciphertext)).plaintext)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._credential is not None:
                self._credential.close()
                self._credential = None


def _caused_by(exc: BaseException, cls: type[BaseException]) -> bool:
    """Whether ``cls`` is somewhere in the exception's cause chain (azure-identity wraps network errors)."""
    seen: BaseException | None = exc
    for _ in range(10):
        seen = getattr(seen, "inner_exception", None) or seen.__cause__ or seen.__context__ if seen else None
        if seen is None:
            return False
        if isinstance(seen, cls):
            return True
    return False


def _error_text(exc: Any) -> str:
    """``<code>: <message>`` from a Key Vault or Entra ID error, without the SDK's multi-line dump."""
    error = getattr(exc, "error", None)
    if error is not None and getattr(error, "code", None):
        return f"{error.code}: {error.message}"
    return str(getattr(exc, "message", None) or exc).splitlines()[0]


register_kms(SCHEME, AzureKMS)
