"""The Strongroom store: named SQLite databases, the seam for encryption at rest."""

from .core import Store, check_database_name, init_store, open_store

__all__ = ["Store", "check_database_name", "init_store", "open_store"]
