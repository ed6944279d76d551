"""SQLite data path: consistent page snapshots of live databases, and restoring page images."""

from .connect import connect
from .image import BytesImage, ImageSource, ImageVFS, copy_table, integrity_check, open_image, write_database
from .snapshot import DatabaseStats, ObjectStats, SchemaEntry, Snapshot

__all__ = [
    "BytesImage",
    "DatabaseStats",
    "ImageSource",
    "ImageVFS",
    "ObjectStats",
    "SchemaEntry",
    "Snapshot",
    "connect",
    "copy_table",
    "integrity_check",
    "open_image",
    "write_database",
]
