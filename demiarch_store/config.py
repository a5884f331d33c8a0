"""Settings: one frozen dataclass, and the only function that reads the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import StoreError

__all__ = ["StoreConfig", "default_home", "default_projects_dir"]


def default_home() -> Path:
    """Return ``$DEMIARCH_HOME``, or ``~/.demiarch`` when it is not set."""
    home = os.environ.get("DEMIARCH_HOME")
    return Path(home).expanduser() if home else Path.home() / ".demiarch"


def default_projects_dir() -> Path:
    """Return the default projects directory: ``<home>/projects``."""
    return default_home() / "projects"


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreConfig:
    """How a store lays out its files and shares its connections."""

    projects_dir: Path = field(default_factory=default_projects_dir)
    """Directory holding one ``<project_id>/database.sqlite`` per project."""

    max_readers: int = 4
    """Reader connections per project (each has its own thread, opened on demand)."""

    acquire_timeout: float = 30.0
    """Seconds to wait for a free connection before raising ``PoolTimeout``."""

    busy_deadline: float = 10.0
    """Seconds to keep retrying a write that another process blocks before ``DatabaseBusy``."""

    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """SQLite ``synchronous`` pragma. ``FULL`` makes each commit survive power loss."""

    keep_backups: int = 5
    """Number of backups kept per project; older ones are deleted."""

    max_open_projects: int = 64
    """Projects a ``Store`` keeps open at once; the least recently used idle one is closed."""

    journal_size_limit: int = 64 * 1024 * 1024
    """Bytes the ``-wal`` file is truncated to after a checkpoint."""

    wal_checkpoint_bytes: int = 16 * 1024 * 1024
    """``-wal`` size above which the writer, once idle, checkpoints with ``TRUNCATE``."""

    slow_transaction: float = 1.0
    """Seconds after which a finished unit of work is logged at warning level."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "projects_dir", Path(self.projects_dir).expanduser())
        if self.max_readers < 1:
            raise StoreError("max_readers must be at least 1", hint=f"got {self.max_readers}")
        if self.acquire_timeout <= 0 or self.busy_deadline < 0:
            raise StoreError(
                "acquire_timeout must be positive and busy_deadline not negative",
                hint=f"got {self.acquire_timeout} and {self.busy_deadline}",
            )
        if self.synchronous not in ("NORMAL", "FULL"):
            raise StoreError(
                "synchronous must be 'NORMAL' or 'FULL'", hint=f"got {self.synchronous!r}"
            )
        if self.wal_checkpoint_bytes < 0 or self.slow_transaction < 0:
            raise StoreError(
                "wal_checkpoint_bytes and slow_transaction must not be negative",
                hint=f"got {self.wal_checkpoint_bytes} and {self.slow_transaction}",
            )
        if self.keep_backups < 1 or self.max_open_projects < 1:
            raise StoreError("keep_backups and max_open_projects must be at least 1")
