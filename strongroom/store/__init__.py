"""The Strongroom store: named SQLite databases in regions, encrypted at rest under a key hierarchy.

``core.Store`` is the facade; its parts, one module each: ``meta`` (the metadata file), ``cmek``
(each region's keys, CMEK enable/rotate/revoke), ``keys`` (a region's key files), ``locks`` (the
rotation lock), ``databases``, ``connection`` (guarded connections that follow online re-keys),
``rotation``, ``status`` (the encryption status report), ``backups`` (BACKUP/RESTORE/SHOW/ALTER as
jobs), ``managed`` (managed backups), ``jobs`` (SHOW JOBS), ``audit`` (the CMEK audit log).
"""

from . import managed
from .core import Store, init_store, open_store, register_sql_sessions
from .meta import DEFAULT_REGION, check_database_name
from .status import RegionStatus, encryption_status_table

__all__ = [
    "DEFAULT_REGION",
    "RegionStatus",
    "Store",
    "check_database_name",
    "encryption_status_table",
    "init_store",
    "managed",
    "open_store",
    "register_sql_sessions",
]
