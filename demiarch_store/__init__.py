"""demiarch-store: an async, embedded per-project SQLite data layer for agent frameworks."""

from .config import StoreConfig, load_config
from .errors import (
    BackupError,
    BundleError,
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
from .legacy import LegacyImportReport
from .project import AsyncProjectStore
from .records import Conversation, Message, ProjectRecord
from .store import ProjectInfo, Store
from .transaction import Snapshot, Transaction

__all__ = [
    "AsyncProjectStore",
    "BackupError",
    "BundleError",
    "Checkpoint",
    "ConstraintViolation",
    "Conversation",
    "CorruptDatabase",
    "DatabaseBusy",
    "HealthReport",
    "InvalidProjectId",
    "InvalidValue",
    "LegacyImportReport",
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
    "load_config",
    "new_project_id",
    "validate_project_id",
]

__version__ = "0.1.0"
