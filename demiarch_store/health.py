"""Health and metrics: the check report, the stats snapshot, and the writer's idle upkeep.

Counters live on the pool (``Pool.counters``) and cost an integer increment or one float stored
in a fixed array on the hot path; everything else (sorting, percentiles, file sizes, checks) is
computed only when ``project.stats()`` or ``project.check()`` asks for it.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import stat
import tempfile
from array import array
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .revisions import read_revision
from .schema import HEAD_REVISION

if TYPE_CHECKING:
    from .config import StoreConfig

__all__ = [
    "UPKEEP_COMMITS",
    "UPKEEP_SECONDS",
    "Checkpoint",
    "HealthReport",
    "Percentiles",
    "Reservoir",
    "StoreStats",
    "build_report",
    "check_job",
    "expected_shape",
    "foreign_object",
    "harden",
    "schema_problem",
    "schema_shape",
]

log = logging.getLogger("demiarch_store")

RESERVOIR_SIZE = 1024
UPKEEP_COMMITS = 50
"""When the writer goes idle, it looks at the WAL's size after this many commits..."""
UPKEEP_SECONDS = 1.0
"""...or after this many seconds, whichever comes first."""
_MAX_ROWS = 100


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Durations in seconds over the most recent samples (at most 1024)."""

    count: int
    """Samples recorded since the project opened (the percentiles use the latest ones)."""
    p50: float
    p95: float
    p99: float
    max: float


class Reservoir:
    """The latest ``size`` samples of a duration, in a fixed array: no allocation per sample."""

    __slots__ = ("_data", "_n", "_size")

    def __init__(self, size: int = RESERVOIR_SIZE) -> None:
        self._data = array("d", bytes(8 * size))
        self._size = size
        self._n = 0

    def add(self, seconds: float) -> None:
        """Record one sample (runs on the event loop thread only)."""
        self._data[self._n % self._size] = seconds
        self._n += 1

    def percentiles(self) -> Percentiles:
        """Return nearest-rank percentiles of the samples held."""
        n = min(self._n, self._size)
        if n == 0:
            return Percentiles(count=0, p50=0.0, p95=0.0, p99=0.0, max=0.0)
        data = sorted(self._data[:n])

        def rank(q: float) -> float:
            return data[max(0, math.ceil(q * n) - 1)]

        return Percentiles(
            count=self._n, p50=rank(0.50), p95=rank(0.95), p99=rank(0.99), max=data[-1]
        )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The outcome of one ``PRAGMA wal_checkpoint``."""

    mode: Literal["PASSIVE", "TRUNCATE"]
    busy: bool
    """True when the checkpoint could not finish because another connection was in the way."""
    log_frames: int
    """Frames in the ``-wal`` file (-1 when the database is not in WAL mode)."""
    checkpointed_frames: int
    """Frames copied back into the database file."""
    wal_bytes_before: int
    """Size of the ``-wal`` file just before the checkpoint."""

    @property
    def blocked(self) -> bool:
        """True when a reader's snapshot kept frames from being copied back."""
        return self.busy or self.checkpointed_frames < self.log_frames


@dataclass
class Counters:
    """What a store's engine counts (one set per pool; ``StoreStats`` is their snapshot)."""

    commits: int = 0
    rollbacks: int = 0
    busy_retries: int = 0
    busy_errors: int = 0
    pool_timeouts: int = 0
    groups: int = 0
    idle_checkpoints: int = 0
    checkpoints: int = 0
    last_checkpoint: Checkpoint | None = None
    pool_wait: Reservoir = field(default_factory=Reservoir)
    transaction_seconds: Reservoir = field(default_factory=Reservoir)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A snapshot of one project's counters since it opened (``project.stats()``)."""

    commits: int
    """Units of work committed."""
    rollbacks: int
    """Units of work rolled back (an exception, a cancellation or a failed commit)."""
    group_commits: int
    """SQLite transactions that committed grouped write-only units."""
    busy_retries: int
    """Times ``BEGIN IMMEDIATE`` found another process holding the lock and retried."""
    database_busy: int
    """``DatabaseBusy`` errors raised (the retry deadline passed)."""
    pool_timeouts: int
    """``PoolTimeout`` errors raised (no connection within ``acquire_timeout``)."""
    pool_wait: Percentiles
    """Time to get a reader (snapshots) or the writer (units of work that read)."""
    transaction_seconds: Percentiles
    """Time from entering a unit of work to its commit or rollback."""
    connections: int
    """Open connections (the writer and the readers opened so far)."""
    connections_in_use: int
    """Connections serving a unit of work, a snapshot or a job right now."""
    in_flight: int
    """Units of work and snapshots under way."""
    checkpoints: int
    """``PASSIVE`` checkpoints run on the checkpointer's connection, off the commit path."""
    idle_checkpoints: int
    """``TRUNCATE`` checkpoints the writer ran when idle because the WAL had grown."""
    last_checkpoint: Checkpoint | None
    """The latest of those checkpoints."""


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What ``project.check()`` found: ``ok``, the ``problems``, and the figures behind them."""

    ok: bool
    problems: tuple[str, ...]
    """One sentence per problem: what is wrong and what to do."""
    check: Literal["quick_check", "integrity_check"]
    """Which SQLite check ran (``full=True`` runs the slower ``integrity_check``)."""
    integrity: tuple[str, ...]
    """Its result rows: ``("ok",)`` for a healthy file (at most 100 rows)."""
    foreign_key_violations: tuple[tuple[Any, ...], ...]
    """``PRAGMA foreign_key_check`` rows: (table, rowid, parent table, key index); at most 100."""
    revision: str | None
    """The schema revision in the file."""
    head_revision: str
    """The schema revision this code writes."""
    database_bytes: int
    wal_bytes: int
    shm_bytes: int
    page_size: int
    page_count: int
    freelist_pages: int
    """Unused pages that ``vacuum()`` would give back to the file system."""
    checkpoint: Checkpoint | None
    """A ``PASSIVE`` checkpoint run by this check: ``blocked`` means a reader holds old frames."""
    stats: StoreStats
    """Pool and retry figures at the time of the check."""

    @property
    def checkpoint_blocked(self) -> bool:
        """True when the checkpoint of this check could not copy every frame back."""
        return self.checkpoint is not None and self.checkpoint.blocked


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return 0


def _checkpoint(
    conn: sqlite3.Connection, mode: Literal["PASSIVE", "TRUNCATE"], wal: int
) -> Checkpoint:
    busy, log_frames, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    return Checkpoint(mode, bool(busy), int(log_frames), int(done), wal)


def check_job(conn: sqlite3.Connection, path: Path, full: bool) -> dict[str, Any]:
    """Gather the figures of a health check on a reader connection (one hop).

    Each step that fails on a damaged file is recorded as a problem instead of raising, so the
    caller always gets a report.
    """
    figures: dict[str, Any] = {"errors": []}
    errors: list[str] = figures["errors"]
    mode = "integrity_check" if full else "quick_check"
    try:
        rows = conn.execute(f"PRAGMA {mode}({_MAX_ROWS})").fetchall()
        figures["integrity"] = tuple(str(r[0]) for r in rows)
    except sqlite3.DatabaseError as exc:
        figures["integrity"] = (f"{mode} could not run: {exc}",)
    try:
        rows = conn.execute("PRAGMA foreign_key_check").fetchmany(_MAX_ROWS)
        figures["foreign_keys"] = tuple(tuple(r) for r in rows)
    except sqlite3.DatabaseError as exc:
        figures["foreign_keys"] = ()
        errors.append(f"foreign_key_check could not run: {exc}")
    try:
        figures["revision"] = read_revision(conn)
    except sqlite3.DatabaseError as exc:
        figures["revision"] = None
        errors.append(f"the schema revision could not be read: {exc}")
    for name in ("page_size", "page_count", "freelist_count"):
        try:
            figures[name] = int(conn.execute(f"PRAGMA {name}").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            figures[name] = 0
            errors.append(f"PRAGMA {name} failed: {exc}")
    wal = _size(f"{path}-wal")
    try:
        figures["checkpoint"] = _checkpoint(conn, "PASSIVE", wal)
    except sqlite3.DatabaseError as exc:
        figures["checkpoint"] = None
        errors.append(f"a PASSIVE checkpoint failed: {exc}")
    modes = {}
    for suffix in ("", "-wal", "-shm"):
        try:
            st = os.lstat(f"{path}{suffix}")
        except FileNotFoundError:
            continue
        modes[suffix] = stat.S_IMODE(st.st_mode)
        figures[f"size{suffix}"] = st.st_size
    figures["modes"] = modes
    return figures


def build_report(
    figures: dict[str, Any], *, full: bool, stats: StoreStats, config: StoreConfig, path: Path
) -> HealthReport:
    """Turn the figures of ``check_job`` into a report, naming each problem and its remedy."""
    problems: list[str] = []
    integrity: tuple[str, ...] = figures["integrity"]
    if integrity != ("ok",):
        more = f" (and {len(integrity) - 1} more)" if len(integrity) > 1 else ""
        problems.append(
            f"{'integrity_check' if full else 'quick_check'} failed: {integrity[0]}{more}; "
            "restore the project from a backup or quarantine it"
        )
    fks: tuple[tuple[Any, ...], ...] = figures["foreign_keys"]
    if fks:
        tables = sorted({str(r[0]) for r in fks})
        problems.append(
            f"{len(fks)}{'+' if len(fks) >= _MAX_ROWS else ''} rows violate foreign keys "
            f"(tables: {', '.join(tables)}); restore from a backup or delete the orphans"
        )
    revision = figures["revision"]
    if revision != HEAD_REVISION:
        problems.append(
            f"schema revision {revision!r} is not this code's head {HEAD_REVISION!r}; "
            "reopen the project to migrate it"
        )
    problems.extend(f"{e}; the file may be damaged" for e in figures["errors"])
    checkpoint: Checkpoint | None = figures["checkpoint"]
    wal = figures.get("size-wal", 0)
    if checkpoint is not None and checkpoint.blocked and wal > config.wal_checkpoint_bytes:
        problems.append(
            f"the WAL has grown to {wal} bytes and a checkpoint could not copy "
            f"{checkpoint.log_frames - checkpoint.checkpointed_frames} of its "
            f"{checkpoint.log_frames} frames back: a long read (in this process or another) "
            "holds an old snapshot; end long reads so the WAL can be reset"
        )
    for suffix, mode in sorted(figures["modes"].items()):
        if mode & 0o077:
            problems.append(
                f"{path.name}{suffix} has mode {mode:04o}, readable by other users; "
                f"run chmod 600 on it"
            )
    return HealthReport(
        ok=not problems,
        problems=tuple(problems),
        check="integrity_check" if full else "quick_check",
        integrity=integrity,
        foreign_key_violations=fks,
        revision=revision,
        head_revision=HEAD_REVISION,
        database_bytes=figures.get("size", 0),
        wal_bytes=wal,
        shm_bytes=figures.get("size-shm", 0),
        page_size=figures["page_size"],
        page_count=figures["page_count"],
        freelist_pages=figures["freelist_count"],
        checkpoint=checkpoint,
        stats=stats,
    )


# -- files from elsewhere ----------------------------------------------------------------------

# SQLite's own tables: statistics that ANALYZE and PRAGMA optimize write, AUTOINCREMENT counters.
_SQLITE_TABLES = frozenset({"sqlite_stat1", "sqlite_stat4", "sqlite_sequence"})

SchemaShape = dict[str, tuple[Any, ...]]
"""Table name -> (columns, indexes, foreign keys), as SQLite's pragmas describe them."""


def harden(conn: sqlite3.Connection) -> None:
    """Make a connection to a file from elsewhere run nothing its schema holds.

    ``trusted_schema=OFF`` keeps functions with side effects and virtual tables out of its
    views, triggers, indexes and defaults; SQLite's defensive mode (Python 3.12+, through
    ``setconfig``) refuses writes to the schema itself. On Python 3.11, which cannot set it,
    the file is read through a read-only URI until ``schema_problem`` has passed it.
    """
    conn.execute("PRAGMA trusted_schema = OFF")
    setconfig = getattr(conn, "setconfig", None)
    defensive = getattr(sqlite3, "SQLITE_DBCONFIG_DEFENSIVE", None)
    if setconfig is not None and defensive is not None:
        setconfig(defensive, True)


def foreign_object(conn: sqlite3.Connection) -> str | None:
    """Name the first object demiarch-store never makes (a trigger, a view, a virtual table).

    Reads ``sqlite_master`` only: nothing the file defines runs.
    """
    for kind, name, sql in conn.execute(
        "SELECT type, name, sql FROM main.sqlite_master ORDER BY type, name"
    ):
        if kind in ("trigger", "view"):
            return f"a {kind} {name!r}"
        if (
            kind == "table"
            and isinstance(sql, str)
            and sql.lstrip()[:14].upper() == "CREATE VIRTUAL"
        ):
            return f"a virtual table {name!r}"
        if kind not in ("table", "index"):
            return f"an object {name!r} of type {kind!r}"
    return None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def schema_shape(conn: sqlite3.Connection) -> SchemaShape:
    """Describe every table of the main database: columns, indexes and foreign keys."""
    shape: SchemaShape = {}
    tables = [
        r[0]
        for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")
        if r[0] not in _SQLITE_TABLES
    ]
    for table in tables:
        q = _quote(table)
        # Order-free: a column added by a migration comes last, one created with its table
        # may not; the order changes nothing a file can do.
        columns = tuple(
            sorted(
                (name, str(kind).upper(), notnull, default, pk, hidden)
                for _, name, kind, notnull, default, pk, hidden in conn.execute(
                    f"PRAGMA main.table_xinfo({q})"
                )
            )
        )
        indexes = []
        for _, index, unique, origin, partial in conn.execute(f"PRAGMA main.index_list({q})"):
            keys = tuple(
                # An expression (cid -2) or the rowid (cid -1) has no column name.
                (seqno, name if cid >= 0 else f"<{cid}>", desc, coll, key)
                for seqno, cid, name, desc, coll, key in conn.execute(
                    f"PRAGMA main.index_xinfo({_quote(index)})"
                )
            )
            # SQLite names the indexes of UNIQUE and PRIMARY KEY constraints itself.
            shown = index if origin == "c" else f"({origin})"
            indexes.append((shown, unique, origin, partial, keys))
        fks = tuple(
            tuple(row[1:])  # without the constraint's number, which follows declaration order
            for row in conn.execute(f"PRAGMA main.foreign_key_list({q})")
        )
        shape[table] = (columns, tuple(sorted(indexes, key=repr)), tuple(sorted(fks, key=repr)))
    return shape


@cache
def expected_shape(revision: str) -> SchemaShape:
    """The shape of the schema that demiarch-store's migrations make at ``revision``.

    Built once per revision in a scratch database: from the metadata's DDL for the head (as
    a new project gets it), by running the migrations for an older revision. So a revision
    added later is covered without a list to keep in step.
    """
    from .revisions import migrate_file, schema_ddl

    if revision == HEAD_REVISION:
        conn = sqlite3.connect(":memory:", isolation_level=None)
        try:
            for statement in schema_ddl():
                conn.execute(statement)
            return schema_shape(conn)
        finally:
            conn.close()
    with tempfile.TemporaryDirectory(prefix="demiarch-schema-") as scratch:
        path = Path(scratch) / "schema.sqlite"
        migrate_file(path, project=None, target=revision)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            return schema_shape(conn)
        finally:
            conn.close()


def schema_problem(conn: sqlite3.Connection, revision: str) -> str | None:
    """Say how a file's schema differs from what revision ``revision`` makes, or None.

    ``revision`` must be one this code knows. Call ``foreign_object`` first: a view could
    stand where a table is expected.
    """
    expected = expected_shape(revision)
    actual = schema_shape(conn)
    extra = sorted(set(actual) - set(expected))
    if extra:
        return f"holds a table {extra[0]!r} that revision {revision} does not make"
    missing = sorted(set(expected) - set(actual))
    if missing:
        return f"lacks the table {missing[0]!r} that revision {revision} makes"
    for table in sorted(expected):
        want, got = expected[table], actual[table]
        if want == got:
            continue
        for what, i in (("columns", 0), ("indexes", 1), ("foreign keys", 2)):
            if want[i] != got[i]:
                names = {_label(x) for x in got[i]} - {_label(x) for x in want[i]}
                detail = f" (unexpected: {', '.join(sorted(names)[:3])})" if names else ""
                return f"has {what} on table {table!r} unlike revision {revision}'s{detail}"
    return None


def _label(item: tuple[Any, ...]) -> str:
    return repr(item[0]) if isinstance(item[0], str) else repr(item)
