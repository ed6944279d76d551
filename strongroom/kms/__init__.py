"""Key management services by URI scheme: ``open_kms(uri)`` gives a :class:`KMS`."""

# Each module registers its schemes; cloud SDKs are imported only when a URI of theirs is opened.
from . import age, aws, azure, gcp, local, pkcs11, vault  # noqa: F401
from .base import KMS, can_decrypt, kms_schemes, open_kms, register_kms, wraps_offline
from .cache import KeyCache, disable_key_cache, enable_key_cache, key_cache
from .local import LocalKMS, create_key, default_keyring, local_kms_uri

__all__ = [
    "KMS",
    "KeyCache",
    "LocalKMS",
    "can_decrypt",
    "create_key",
    "default_keyring",
    "disable_key_cache",
    "enable_key_cache",
    "key_cache",
    "kms_schemes",
    "local_kms_uri",
    "open_kms",
    "register_kms",
    "wraps_offline",
]
