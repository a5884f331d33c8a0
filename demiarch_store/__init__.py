"""demiarch-store: an async, embedded per-project SQLite data layer for agent frameworks."""

from .config import StoreConfig
from .errors import (
    BackupError,
    ConstraintViolation,
    CorruptDatabase,
    DatabaseBusy,
    InvalidProjectId,
    InvalidValue,
    MigrationError,
    NotFound,
    PoolTimeout,
    ProjectExists,
    ProjectNotFound,
    SchemaTooNew,
    StorageError,
    StoreClosed,
    StoreError,
)
from .health import Checkpoint, HealthReport, Percentiles, StoreStats
from .ids import new_project_id, validate_project_id
from .project import AsyncProjectStore
from .records import Conversation, Message, ProjectRecord
from .store import ProjectInfo, Store
from .transaction import Snapshot, Transaction

__all__ = [
    "AsyncProjectStore",
    "BackupError",
    "Checkpoint",
    "ConstraintViolation",
    "Conversation",
    "CorruptDatabase",
    "DatabaseBusy",
    "HealthReport",
    "InvalidProjectId",
    "InvalidValue",
    "Message",
    "MigrationError",
    "NotFound",
    "Percentiles",
    "PoolTimeout",
    "ProjectExists",
    "ProjectInfo",
    "ProjectNotFound",
    "ProjectRecord",
    "SchemaTooNew",
    "Snapshot",
    "StorageError",
    "Store",
    "StoreClosed",
    "StoreConfig",
    "StoreError",
    "StoreStats",
    "Transaction",
    "new_project_id",
    "validate_project_id",
]

__version__ = "0.1.0"
