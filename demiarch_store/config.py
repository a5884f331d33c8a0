"""Settings: one frozen dataclass, and the only function that reads the environment.

Where the projects directory comes from, first match wins:

1. an explicit argument (``StoreConfig(projects_dir=...)`` or ``load_config(projects_dir=...)``);
2. ``projects_dir`` in the TOML file ``$DEMIARCH_HOME/config.toml`` (relative paths are taken
   from the file's directory);
3. ``$DEMIARCH_HOME/projects``, where ``DEMIARCH_HOME`` defaults to ``~/.demiarch``.

The config file may set any other ``StoreConfig`` field too; ``load_config()`` applies them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .errors import InvalidValue, StorageError, StoreError

__all__ = ["CONFIG_NAME", "StoreConfig", "default_projects_dir", "load_config"]

CONFIG_NAME = "config.toml"


def load_config(*, environ: Mapping[str, str] | None = None, **overrides: Any) -> StoreConfig:
    """Return the ``StoreConfig`` for this environment: arguments > config file > defaults.

    Reads ``DEMIARCH_HOME`` (default ``~/.demiarch``) and ``DEMIARCH_DATABASE_URL`` (a
    PostgreSQL URL; see ``StoreConfig.database_url``) from ``environ`` (default ``os.environ``)
    and the optional TOML file ``<home>/config.toml``, whose top-level keys are ``StoreConfig``
    field names. Keyword arguments are ``StoreConfig`` fields and win over the file.

    Raises ``StoreError`` for a file that is not valid TOML, an unknown key or a value of the
    wrong type, naming the file and the key; ``InvalidValue`` for a value out of range (naming
    the file if it may hold it); ``StorageError`` if the file cannot be read.

    Example::

        config = load_config(max_readers=2)   # projects_dir from the file or $DEMIARCH_HOME
    """
    env = os.environ if environ is None else environ
    home = Path(env.get("DEMIARCH_HOME") or "~/.demiarch").expanduser()
    values: dict[str, Any] = {"projects_dir": home / "projects"}
    if env.get("DEMIARCH_DATABASE_URL"):
        values["database_url"] = env["DEMIARCH_DATABASE_URL"]
    from_file = _read_file(home / CONFIG_NAME)
    values.update(from_file)
    values.update(overrides)
    try:
        return StoreConfig(**values)
    except InvalidValue as exc:
        if not set(from_file) - set(overrides):
            raise
        # The file may hold the bad value: name it.
        raise InvalidValue(exc.message, path=home / CONFIG_NAME, hint=exc.hint) from exc


def default_projects_dir() -> Path:
    """Return the projects directory ``load_config()`` picks when none is given."""
    return load_config().projects_dir


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise StoreError(
            f"the config file is not valid TOML ({exc})",
            path=path,
            hint="fix the file or delete it to use the defaults",
        ) from exc
    except OSError as exc:
        raise StorageError(
            f"cannot read the config file: {exc.strerror}",
            path=path,
            hint="check the file's permissions",
        ) from exc
    kinds = {f.name: f.type for f in fields(StoreConfig)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        kind = kinds.get(key)
        if kind is None:
            raise StoreError(
                f"unknown setting {key!r} in the config file",
                path=path,
                hint=f"known settings: {', '.join(sorted(kinds))}",
            )
        if key == "projects_dir":
            ok = isinstance(value, str) and value != ""
            value = path.parent / Path(value).expanduser() if ok else value
        elif kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise StoreError(
                f"setting {key!r} in the config file has the wrong type",
                path=path,
                hint=f"expected {'a path string' if key == 'projects_dir' else kind}",
            )
        out[key] = value
    return out


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

    inline_reads: bool = True
    """Run a ``read()`` block's ``get(id)`` on the event loop's thread when its reader is free.

    A read by primary key costs SQLite a few microseconds, less than handing it to the reader's
    thread and back, so it runs in place (on the same connection, in the same snapshot) when
    that connection's thread has nothing queued. It never waits there for a lock: one that is
    busy sends the read to the thread. A task yields to the event loop at least once every
    four such reads. Other queries always run on the reader's thread. ``False`` sends every
    query to a thread.
    """

    inline_writes: bool = True
    """Commit a small write-only unit of work on the event loop's thread when nothing else waits.

    When a ``transaction()`` block that only inserted (at most 16 rows, 64 KiB of text) ends
    while no other unit of work or read of the project is in flight and the writer's thread is
    idle, its ``BEGIN IMMEDIATE ... COMMIT`` runs in place on the writer's connection: the hop
    to the thread and back costs several times what SQLite spends on it. It never waits there:
    a write lock held by another process sends the unit to the thread (which retries as
    always), and the WAL is checkpointed on a connection of its own. A unit that reads, then
    inserts, holds the writer: while the writer's thread is idle, its reads (``get(id)`` and
    every query; one past 2 ms is interrupted and run on the thread) and its commit run in
    place the same way, however many units wait their turn. Only with
    ``synchronous = "NORMAL"`` (a ``FULL`` commit waits for the disk). A task yields to the
    event loop at least once every four operations run in place. ``False`` commits every unit
    on the writer's thread.
    """

    database_url: str | None = None
    """A PostgreSQL URL (``postgresql://user@host:5432/db``): keep the projects in that database
    instead of one SQLite file each under ``projects_dir`` (see ``docs/postgresql.md``; needs the
    ``postgresql`` extra). ``None``: SQLite."""

    pool_size: int = 10
    """PostgreSQL only: the most connections the store opens to the server (its pool's bound)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "projects_dir", Path(self.projects_dir).expanduser())
        if self.max_readers < 1:
            raise InvalidValue(
                "max_readers must be at least 1", hint=f"got {self.max_readers}; use 1 or more"
            )
        if self.acquire_timeout <= 0 or self.busy_deadline < 0:
            raise InvalidValue(
                "acquire_timeout must be positive and busy_deadline not negative",
                hint=f"got {self.acquire_timeout} and {self.busy_deadline}",
            )
        if self.synchronous not in ("NORMAL", "FULL"):
            raise InvalidValue(
                "synchronous must be 'NORMAL' or 'FULL'", hint=f"got {self.synchronous!r}"
            )
        if self.wal_checkpoint_bytes < 0 or self.slow_transaction < 0:
            raise InvalidValue(
                "wal_checkpoint_bytes and slow_transaction must not be negative",
                hint=f"got {self.wal_checkpoint_bytes} and {self.slow_transaction}",
            )
        if self.database_url is not None and not self.database_url.startswith(
            ("postgresql://", "postgres://")
        ):
            raise InvalidValue(
                "database_url must be a PostgreSQL URL",
                hint="write postgresql://user@host:5432/dbname, or leave it unset for SQLite",
            )
        if self.pool_size < 1:
            raise InvalidValue("pool_size must be at least 1", hint=f"got {self.pool_size}")
        if self.keep_backups < 1 or self.max_open_projects < 1:
            raise InvalidValue(
                "keep_backups and max_open_projects must be at least 1",
                hint=f"got {self.keep_backups} and {self.max_open_projects}",
            )
