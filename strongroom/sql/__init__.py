"""Strongroom's SQL: the statement parser and its AST."""

from .ast import (
    LATEST,
    AlterBackup,
    Backup,
    CreateDatabase,
    DropDatabase,
    Options,
    Passthrough,
    Restore,
    ShowBackup,
    ShowBackups,
    ShowDatabases,
    ShowJobs,
    ShowTables,
    Statement,
    Targets,
    Use,
)
from .parser import SQLSyntaxError, parse

__all__ = [
    "LATEST",
    "AlterBackup",
    "Backup",
    "CreateDatabase",
    "DropDatabase",
    "Options",
    "Passthrough",
    "Restore",
    "SQLSyntaxError",
    "ShowBackup",
    "ShowBackups",
    "ShowDatabases",
    "ShowJobs",
    "ShowTables",
    "Statement",
    "Targets",
    "Use",
    "parse",
]
