"""A key in a PKCS#11 token (HSM, SoftHSM2, smart card), named by an RFC 7512 URI.

``pkcs11:token=<token label>;object=<key label>?module-path=<library>&pin-value=<pin>`` (or
``pin-source=file:<path>`` instead of ``pin-value``). The key is an AES key that never leaves the token:
the data key is wrapped with CKM_AES_GCM *inside* the token, with a 12-byte random IV and the master key
id as associated data (so a blob wrapped by one key cannot be presented as another's). Wrapped blob:
version byte ``0x01`` + IV + ciphertext and tag.

The master key id is the canonical ``pkcs11:token=<label>;object=<label>``: the module path and PIN say how
to reach the key on this machine, not which key it is, so they are not part of the identity.
python-pkcs11 is imported on first use so ``import strongroom`` works without the ``[hsm]`` extra.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from ..cloud.extras import import_extra
from ..errors import KMSError, NotFoundError, UsageError
from ..uri import parse_uri
from .base import register_kms

SCHEME = "pkcs11"
PARAMS = ("module-path", "pin-value", "pin-source")
# RFC 7512 path attributes we accept; ``type`` may only say what we use anyway.
PATH_ATTRS = ("token", "object", "type")
_FORMAT = b"\x01"
_IV, _TAG = 12, 16
# Characters RFC 7512 allows unescaped in a path attribute value (pk11-pchar minus ';' and '/').
_SAFE = "-._~:[]@!$'()*+,="


def _import_pkcs11() -> Any:
    return import_extra("pkcs11", "hsm", "pkcs11: KMS")


def _parse_path(path: str) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for piece in path.split(";"):
        if not piece:
            continue
        name, sep, value = piece.partition("=")
        if not sep:
            raise UsageError(f"pkcs11 URI attribute {name!r} has no value (use name=value; separated by ';')")
        if name not in PATH_ATTRS:
            raise UsageError(f"unknown pkcs11 URI attributes: {name} (supported: {', '.join(PATH_ATTRS)})")
        attrs[name] = unquote(value)
    return attrs


class Pkcs11KMS:
    """One AES key in a PKCS#11 token; the library is loaded on first encrypt/decrypt."""

    def __init__(self, uri: str) -> None:
        parsed = parse_uri(uri)
        parsed.check_params(PARAMS)
        if parsed.host:
            raise UsageError("pkcs11 URI must look like pkcs11:token=<label>;object=<key label>?module-path=...")
        attrs = _parse_path(parsed.path)
        if not attrs.get("token") or not attrs.get("object"):
            raise UsageError("pkcs11 URI must name both token=<label> and object=<key label>")
        if attrs.get("type", "secret-key") != "secret-key":
            raise UsageError("pkcs11 KMS keys must be AES secret keys (type=secret-key)")
        self._token, self._object = attrs["token"], attrs["object"]
        self._module = parsed.params.get("module-path", "")
        if not self._module:
            raise UsageError("pkcs11 URI needs module-path=<PKCS#11 library>, e.g. /usr/lib/softhsm/libsofthsm2.so")
        self._pin_value = parsed.params.get("pin-value")
        self._pin_source = parsed.params.get("pin-source")
        if self._pin_value is not None and self._pin_source is not None:
            raise UsageError("pkcs11 URI: give pin-value or pin-source, not both")
        if self._pin_source is not None and not self._pin_source.startswith("file:"):
            raise UsageError("pkcs11 pin-source must be a file: URI (pin-source=file:/path/to/pin)")
        self._uri = uri
        self._id = f"pkcs11:token={quote(self._token, safe=_SAFE)};object={quote(self._object, safe=_SAFE)}"
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Pkcs11KMS({self._id!r})"

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def master_key_id(self) -> str:
        return self._id

    def _pin(self) -> str | None:
        if self._pin_source is None:
            return self._pin_value
        path = Path(unquote(self._pin_source[len("file:") :].removeprefix("//")))
        try:
            return path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise KMSError(f"{self._id}: cannot read pin-source file {path}: {exc.strerror}") from None

    def _with_key(self, fn: Any) -> Any:
        """Open a session on the token, find the key and run ``fn(key)``; PKCS#11 errors become ours."""
        pkcs11 = _import_pkcs11()
        from pkcs11 import exceptions as p11e

        if not os.path.exists(self._module):
            raise KMSError(f"{self._id}: PKCS#11 module {self._module} not found")
        with self._lock:
            try:
                lib = pkcs11.lib(self._module)
                try:
                    token = lib.get_token(token_label=self._token)
                except p11e.NoSuchToken:
                    raise NotFoundError(f'{self._id}: no token labelled "{self._token}" in {self._module}') from None
                with token.open(user_pin=self._pin()) as session:
                    try:
                        key = session.get_key(
                            object_class=pkcs11.ObjectClass.SECRET_KEY, key_type=pkcs11.KeyType.AES, label=self._object
                        )
                    except p11e.NoSuchKey:
                        raise NotFoundError(
                            f'{self._id}: no AES key labelled "{self._object}" in token "{self._token}"'
                        ) from None
                    except p11e.MultipleObjectsReturned:
                        raise KMSError(f'{self._id}: more than one key labelled "{self._object}"') from None
                    return fn(key)
            except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
                raise KMSError(f"{self._id}: PIN incorrect") from None
            except p11e.PinLocked:
                raise KMSError(f"{self._id}: PIN locked") from None
            except p11e.UserPinNotInitialized:
                raise KMSError(f'{self._id}: token "{self._token}" has no user PIN set') from None
            except p11e.PKCS11Error as exc:
                raise KMSError(f"{self._id}: PKCS#11 error {type(exc).__name__}") from None
            except OSError as exc:  # the module failed to load
                raise KMSError(f"{self._id}: cannot load PKCS#11 module {self._module}: {exc}") from None

    def encrypt(self, plaintext: bytes) -> bytes:
        _import_pkcs11()  # first: a missing [hsm] extra is a hint, not an ImportError below
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        iv = os.urandom(_IV)
        aad = self._id.encode()
        body = self._with_key(
            lambda key: key.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, aad, 128))
        )
        return _FORMAT + iv + bytes(body)

    def decrypt(self, ciphertext: bytes) -> bytes:
        _import_pkcs11()  # first: a missing [hsm] extra is a hint, not an ImportError below
        from pkcs11 import Mechanism
        from pkcs11 import exceptions as p11e
        from pkcs11.mechanisms import GCMParams

        if len(ciphertext) < 1 + _IV + _TAG or ciphertext[:1] != _FORMAT:
            raise KMSError(f"{self._id}: ciphertext is not one of ours")
        iv, body, aad = ciphertext[1 : 1 + _IV], ciphertext[1 + _IV :], self._id.encode()

        def unwrap(key: Any) -> bytes:
            try:
                return bytes(key.decrypt(body, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, aad, 128)))
            except (p11e.GeneralError, p11e.EncryptedDataInvalid, p11e.FunctionFailed):
                # SoftHSM reports a failed GCM tag check as CKR_GENERAL_ERROR.
                raise KMSError(f"{self._id}: failed to decrypt data key") from None

        return self._with_key(unwrap)

    def close(self) -> None:
        """Sessions are opened per call and closed at once; the loaded module stays for the process."""


register_kms(SCHEME, Pkcs11KMS)
