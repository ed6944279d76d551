"""The Strongroom store: named SQLite databases in regions, encrypted at rest under a key hierarchy."""

from .core import DEFAULT_REGION, RegionStatus, Store, check_database_name, init_store, open_store

__all__ = ["DEFAULT_REGION", "RegionStatus", "Store", "check_database_name", "init_store", "open_store"]
