"""``strongroom serve``: CockroachDB Cloud's CMEK API over a store, and the scheduler beside it."""

from .app import StoreService, create_app
from .scheduler import Scheduler

__all__ = ["Scheduler", "StoreService", "create_app"]
