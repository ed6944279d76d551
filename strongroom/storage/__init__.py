"""External storage by URI scheme: ``open_storage(uri, context)`` gives an :class:`ExternalStorage`."""

# Each module registers its schemes; cloud SDKs are imported only when a URI of theirs is opened.
from . import azure, gcs, local, s3  # noqa: F401
from .base import (
    ExternalStorage,
    ObjectWriter,
    RandomReader,
    StorageContext,
    clean_name,
    join,
    open_storage,
    register_storage,
    storage_schemes,
)
from .local import LocalStorage

__all__ = [
    "ExternalStorage",
    "LocalStorage",
    "ObjectWriter",
    "RandomReader",
    "StorageContext",
    "clean_name",
    "join",
    "open_storage",
    "register_storage",
    "storage_schemes",
]
