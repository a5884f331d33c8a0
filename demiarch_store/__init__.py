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
from .ids import new_project_id, validate_project_id
from .project import AsyncProjectStore
from .records import (
    Agent,
    Checkpoint,
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
    "AsyncProjectStore",
    "BackupError",
    "Checkpoint",
    "CodeArtifact",
    "ConstraintViolation",
    "Conversation",
    "CorruptDatabase",
    "CostTotal",
    "DatabaseBusy",
    "InvalidProjectId",
    "InvalidValue",
    "LLMCall",
    "Message",
    "MigrationError",
    "NotFound",
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
    "Transaction",
    "new_project_id",
    "validate_project_id",
]

__version__ = "0.1.0"
