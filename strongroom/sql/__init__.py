"""Strongroom's SQL: the statement parser, its AST, and the executor behind ``Store.execute``.

The store sits below this layer and cannot import it, so importing this package registers the
executor's ``Session`` as the way a store makes SQL sessions (``strongroom`` itself imports it).
"""

from ..store import register_sql_sessions
from .ast import (
    LATEST,
    AlterBackup,
    Backup,
    ControlSchedule,
    CreateDatabase,
    CreateSchedule,
    DropDatabase,
    Options,
    Passthrough,
    Restore,
    ShowBackup,
    ShowBackups,
    ShowDatabases,
    ShowJobs,
    ShowSchedules,
    ShowTables,
    Statement,
    Targets,
    Use,
)
from .executor import Result, Session
from .parser import SQLSyntaxError, parse

register_sql_sessions(Session)

__all__ = [
    "LATEST",
    "AlterBackup",
    "Backup",
    "ControlSchedule",
    "CreateDatabase",
    "CreateSchedule",
    "DropDatabase",
    "Options",
    "Passthrough",
    "Restore",
    "Result",
    "SQLSyntaxError",
    "Session",
    "ShowBackup",
    "ShowBackups",
    "ShowDatabases",
    "ShowJobs",
    "ShowSchedules",
    "ShowTables",
    "Statement",
    "Targets",
    "Use",
    "parse",
]
