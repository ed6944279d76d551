"""SQLite data path: consistent page snapshots of live databases, and restoring page images."""

from .connect import DEFAULT_CIPHER, apply_key, connect, remove_database_files
from .image import (
    BytesImage,
    ImageSource,
    ImageVFS,
    copy_table,
    integrity_check,
    open_image,
    schema_image,
    write_database,
)
from .snapshot import DatabaseStats, ObjectStats, SchemaEntry, Snapshot, census_stats, compute_stats

__all__ = [
    "DEFAULT_CIPHER",
    "BytesImage",
    "DatabaseStats",
    "ImageSource",
    "ImageVFS",
    "ObjectStats",
    "SchemaEntry",
    "Snapshot",
    "apply_key",
    "census_stats",
    "compute_stats",
    "connect",
    "copy_table",
    "integrity_check",
    "open_image",
    "remove_database_files",
    "schema_image",
    "write_database",
]
