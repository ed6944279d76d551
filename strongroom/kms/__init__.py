"""Key management services by URI scheme: ``open_kms(uri)`` gives a :class:`KMS`."""

from . import local  # noqa: F401  (registers local://)
from .base import KMS, kms_schemes, open_kms, register_kms
from .local import LocalKMS, create_key, default_keyring, local_kms_uri

__all__ = [
    "KMS",
    "LocalKMS",
    "create_key",
    "default_keyring",
    "kms_schemes",
    "local_kms_uri",
    "open_kms",
    "register_kms",
]
