"""The Strongroom store: named SQLite databases in regions, encrypted at rest under a key hierarchy.

- ``core``: the Store (databases, regions, rotation, CMEK, status); ``keys``: a region's key files;
- ``connection``: guarded store connections that follow online re-keys;
- ``managed``: managed backups; ``audit``: the CMEK audit log; ``jobs``: SHOW JOBS.
"""

from .core import (
    DEFAULT_REGION,
    RegionStatus,
    Store,
    check_database_name,
    encryption_status_table,
    init_store,
    open_store,
)

__all__ = [
    "DEFAULT_REGION",
    "RegionStatus",
    "Store",
    "check_database_name",
    "encryption_status_table",
    "init_store",
    "open_store",
]
