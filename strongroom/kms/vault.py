"""HashiCorp Vault's transit engine: ``vault:///<mount>/keys/<name>?VAULT_ADDR=https://...&...``.

CockroachDB defines no Vault KMS URI (its docs use Vault only to reach keys in AWS or GCP), so the
parameters are Vault's own environment variable names, which Vault users already know:
``VAULT_ADDR`` (required: ``https://host:port``; plain ``http://`` only to a loopback address, so a
token never crosses a network in the clear), ``VAULT_TOKEN`` or AppRole's ``VAULT_ROLE_ID`` and
``VAULT_SECRET_ID`` (exactly one way to log in), ``VAULT_NAMESPACE`` (Vault Enterprise / HCP) and
``VAULT_CACERT`` (a CA bundle file for a private CA).

The master key id is the key's full Vault path, ``[<namespace>/]<mount>/keys/<name>``: the same key
whatever address or credentials reach it, and two keys of one name in two mounts or namespaces stay
two identities. Vault's ciphertext ``vault:v<N>:...`` names the key version that made it, so after
``rotate`` old wraps still decrypt (until ``min_decryption_version`` passes them) and a CMEK
rotation re-wraps under the newest version.

Before the first encrypt the key is read, so a mistyped name fails instead of being created by
Vault's upsert-on-encrypt, and a key that cannot encrypt and decrypt (a signing key) is refused.
A token whose policy does not allow ``read`` on the key (least privilege: update on encrypt and
decrypt only) skips that check; Vault then only upserts if the policy grants ``create``.

hvac is imported on first use so ``import strongroom`` works without the ``[vault]`` extra.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..cloud.extras import import_extra
from ..cloud.scrub import register_secret, scrub
from ..errors import KMSError, NotFoundError, UsageError
from ..uri import parse_uri
from .base import register_kms

SCHEME = "vault"
WHAT = "vault:// KMS"  # how a missing [vault] extra names what needed it
PARAMS = ("VAULT_ADDR", "VAULT_TOKEN", "VAULT_ROLE_ID", "VAULT_SECRET_ID", "VAULT_NAMESPACE", "VAULT_CACERT")
KEY_FORM = "Vault KMS URI must look like vault:///<mount>/keys/<key name>?VAULT_ADDR=https://...&VAULT_TOKEN=..."
# Vault's own rule for names in a path (framework.GenericNameRegex), for the mount's parts and the key.
_NAME = re.compile(r"^\w(?:[\w.-]*\w)?$")
_CIPHERTEXT = re.compile(rb"^vault:v(\d+):[A-Za-z0-9+/]+={0,2}$")
# Connect and read timeouts: a dead or partitioned Vault must fail a backup in seconds, not minutes.
_TIMEOUT = (5, 20)
# Vault's messages for a ciphertext this key cannot open (HTTP 400), after _reason's clean-up.
_TOO_OLD = "ciphertext or signature version is disallowed by policy (too old)"
_TOO_NEW = "invalid ciphertext: version is too new"
_NOT_FOUND = "encryption key not found"


def _hvac_exceptions() -> Any:
    return import_extra("hvac.exceptions", "vault", WHAT)


def key_version(ciphertext: bytes) -> int | None:
    """The key version a Vault transit ciphertext was made with (``vault:v3:...`` → 3), else None."""
    found = _CIPHERTEXT.match(ciphertext)
    return int(found.group(1)) if found else None


def _check_addr(addr: str) -> str:
    if not addr:
        raise UsageError("vault kms VAULT_ADDR parameter not specified (such as https://vault.example.com:8200)")
    parts = urlsplit(addr)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(f"VAULT_ADDR must be an http(s) URL such as https://vault.example.com:8200 (got {addr!r})")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise UsageError(
            f"VAULT_ADDR {addr!r} is plain http to another machine: the Vault token would cross the network "
            "in the clear; use https:// (and VAULT_CACERT for a private CA)"
        )
    return addr.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reason(exc: Any) -> str:
    """Vault's error text without the go-multierror wrapping (``1 error occurred:\\n\\t* permission denied``)."""
    errors = getattr(exc, "errors", None) or []
    lines = [line.strip().lstrip("*").strip() for err in errors for line in str(err).splitlines()]
    kept = [line for line in lines if line and not re.fullmatch(r"\d+ errors? occurred:", line)]
    return "; ".join(kept)


class VaultKMS:
    """One transit key, opened from a URI; no network call until the first encrypt/decrypt."""

    def __init__(self, uri: str) -> None:
        parsed = parse_uri(uri)
        parsed.check_params(PARAMS)
        p = parsed.params
        mount, sep, name = parsed.path.strip("/").rpartition("/keys/")
        if parsed.host or not sep or not mount or not all(_NAME.match(part) for part in (*mount.split("/"), name)):
            raise UsageError(KEY_FORM)
        self._uri = uri
        self._mount, self._name = mount, name
        self._addr = _check_addr(p.get("VAULT_ADDR", ""))
        self._namespace = p.get("VAULT_NAMESPACE", "").strip("/")
        self._cacert = p.get("VAULT_CACERT") or None
        self._token = p.get("VAULT_TOKEN", "")
        self._role_id, self._secret_id = p.get("VAULT_ROLE_ID", ""), p.get("VAULT_SECRET_ID", "")
        for secret in (self._token, self._secret_id):
            register_secret(secret)
        approle = bool(self._role_id or self._secret_id)
        if self._token and approle:
            raise UsageError("vault kms: give either VAULT_TOKEN or VAULT_ROLE_ID and VAULT_SECRET_ID, not both")
        if not self._token and not (self._role_id and self._secret_id):
            missing = "VAULT_SECRET_ID" if self._role_id else "VAULT_ROLE_ID" if approle else "VAULT_TOKEN"
            raise UsageError(
                f"vault kms {missing} parameter not specified (log in with VAULT_TOKEN, or AppRole's "
                "VAULT_ROLE_ID and VAULT_SECRET_ID)"
            )
        self._client: Any = None
        self._checked = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VaultKMS(key={self.master_key_id!r}, addr={self._addr!r})"

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def master_key_id(self) -> str:
        return "/".join(part for part in (self._namespace, self._mount, "keys", self._name) if part)

    @property
    def _where(self) -> str:
        return f'Vault key "{self.master_key_id}" at {self._addr}'

    # -- client ---------------------------------------------------------------------------------
    def _vault(self) -> Any:
        with self._lock:
            if self._client is None:
                hvac = import_extra("hvac", "vault", WHAT)
                if self._cacert and not os.path.isfile(self._cacert):
                    raise KMSError(f"{self._where}: VAULT_CACERT {self._cacert} is not a file")
                self._client = hvac.Client(
                    url=self._addr,
                    token=self._token or None,
                    namespace=self._namespace or None,
                    verify=self._cacert or True,
                    timeout=_TIMEOUT,
                )
            if not self._client.token:
                self._login(self._client)
            return self._client

    def _login(self, client: Any) -> None:
        """AppRole login; the token it gives is registered as a secret like the URI's own."""
        response = self._translate("login", lambda: client.auth.approle.login(self._role_id, self._secret_id))
        register_secret(response["auth"]["client_token"])

    def _request(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(client)``; hvac's and requests' exceptions propagate (see :meth:`_translate`)."""
        hexc = _hvac_exceptions()

        client = self._vault()
        try:
            return fn(client)
        except hexc.Forbidden:
            if not self._role_id:
                raise
        # An AppRole token expires (its TTL) while a server keeps this KMS open: log in again, once.
        with self._lock:
            client.token = None
            self._login(client)
        return fn(client)

    def _call(self, op: str, fn: Callable[[Any], Any]) -> Any:
        return self._translate(op, lambda: self._request(fn))

    def _translate(self, op: str, fn: Callable[[], Any]) -> Any:
        """Run Vault requests; every failure becomes one KMSError (or NotFoundError) naming the key."""
        hexc = _hvac_exceptions()  # first: it names the missing extra before requests is imported
        import requests

        where = self._where
        try:
            return fn()
        except hexc.Forbidden:
            if op == "login":
                raise KMSError(f"{where}: AppRole login refused: permission denied") from None
            path = f"{self._mount}/{'keys' if op == 'read' else op}/{self._name}"
            raise KMSError(
                f"{where}: {op}: permission denied (the token is invalid or expired, or its policies do not "
                f"allow {'read' if op == 'read' else 'update'} on {path})"
            ) from None
        except hexc.InvalidPath:
            if op == "login":
                raise KMSError(f"{where}: AppRole login failed: no AppRole auth method at auth/approle") from None
            raise NotFoundError(f"{where}: {op}: key not found (no such key in this mount and namespace)") from None
        except hexc.VaultDown as exc:
            reason = _reason(exc)
            if "sealed" in reason.lower():
                raise KMSError(f"{where}: {op}: Vault is sealed (unseal it, then try again)") from None
            raise KMSError(f"{where}: {op}: Vault unavailable (HTTP 503): {scrub(reason)}") from None
        except hexc.InvalidRequest as exc:
            reason = _reason(exc)
            if reason == _NOT_FOUND:
                raise NotFoundError(
                    f"{where}: {op}: {_NOT_FOUND} (deleted, or never created in this mount and namespace)"
                ) from None
            if op == "login":
                raise KMSError(f"{where}: AppRole login failed: {scrub(reason)}") from None
            raise KMSError(f"{where}: {op}: {scrub(reason)}") from None
        except hexc.VaultError as exc:
            raise KMSError(f"{where}: {op}: {type(exc).__name__}: {scrub(_reason(exc))}".rstrip(": ")) from None
        except requests.exceptions.SSLError:
            hint = "check VAULT_CACERT" if self._cacert else "set VAULT_CACERT to the CA bundle that signed it"
            raise KMSError(f"{where}: {op}: Vault's TLS certificate is not trusted ({hint})") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise KMSError(f"{where}: {op}: Vault unreachable: {type(exc).__name__}") from None

    def _check_key(self) -> None:
        """Read the key once: it exists and can encrypt and decrypt (see the module docstring)."""
        if self._checked:
            return
        hexc = _hvac_exceptions()

        def read() -> Any:
            try:
                return self._request(lambda c: c.secrets.transit.read_key(self._name, mount_point=self._mount))
            except hexc.Forbidden:
                return None  # least privilege: no read on the key; encrypt will say what Vault thinks

        info = self._translate("read", read)
        if info is not None:
            data = info.get("data", {})
            if not (data.get("supports_encryption") and data.get("supports_decryption")):
                raise KMSError(
                    f"{self._where}: a {data.get('type', 'unknown')} key cannot encrypt and decrypt "
                    "(use an aes256-gcm96 or chacha20-poly1305 transit key)"
                )
        self._checked = True

    # -- KMS interface --------------------------------------------------------------------------
    def encrypt(self, plaintext: bytes) -> bytes:
        self._check_key()
        b64 = base64.b64encode(plaintext).decode()
        resp = self._call(
            "encrypt",
            lambda c: c.secrets.transit.encrypt_data(self._name, plaintext=b64, mount_point=self._mount),
        )
        return str(resp["data"]["ciphertext"]).encode()

    def decrypt(self, ciphertext: bytes) -> bytes:
        version = key_version(ciphertext)
        if version is None:
            raise KMSError(f"{self._where}: decrypt: the wrapped key is not a Vault transit ciphertext")
        try:
            resp = self._call(
                "decrypt",
                lambda c: c.secrets.transit.decrypt_data(
                    self._name, ciphertext=ciphertext.decode(), mount_point=self._mount
                ),
            )
        except KMSError as exc:
            raise _explain_version(exc, version) from None
        try:
            return base64.b64decode(resp["data"]["plaintext"], validate=True)
        except (binascii.Error, KeyError, TypeError):
            raise KMSError(f"{self._where}: decrypt: Vault's answer holds no base64 plaintext") from None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.adapter.close()
                self._client = None
            self._checked = False


def _explain_version(exc: KMSError, version: int) -> KMSError:
    """Say which key version a refused ciphertext needs, where Vault's words are about versions."""
    text = str(exc)
    if text.endswith(_TOO_OLD):
        return KMSError(
            f"{text}: the data key was wrapped by key version {version}, now below the key's "
            "min_decryption_version (lower it again to decrypt)"
        )
    if text.endswith(_TOO_NEW):
        return KMSError(f"{text}: the data key was wrapped by key version {version}, which this key does not have")
    return exc


register_kms(SCHEME, VaultKMS)
