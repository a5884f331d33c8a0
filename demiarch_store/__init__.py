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
from .records import (
    Agent,
    AgentSession,
    AgentState,
    CheckpointRecord,
    CodeArtifact,
    Conversation,
    CostTotal,
    LLMCall,
    Message,
    Plugin,
    ProjectRecord,
    SessionRecord,
    Skill,
)
from .store import ProjectInfo, Store
from .transaction import Snapshot, Transaction

__all__ = [
    "Agent",
    "AgentSession",
    "AgentState",
    "AsyncProjectStore",
    "BackupError",
    "BundleError",
    "Checkpoint",
    "CheckpointRecord",
    "CodeArtifact",
    "ConstraintViolation",
    "Conversation",
    "CorruptDatabase",
    "CostTotal",
    "DatabaseBusy",
    "HealthReport",
    "InvalidProjectId",
    "InvalidValue",
    "LLMCall",
    "LegacyImportReport",
    "Message",
    "MigrationError",
    "NotFound",
    "Percentiles",
    "Plugin",
    "PoolTimeout",
    "ProjectExists",
    "ProjectInfo",
    "ProjectNotFound",
    "ProjectRecord",
    "SchemaTooNew",
    "SessionRecord",
    "Skill",
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
