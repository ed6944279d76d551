"""External storage by URI scheme: ``open_storage(uri, context)`` gives an :class:`ExternalStorage`."""

from . import local  # noqa: F401  (registers nodelocal:// and file://)
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
