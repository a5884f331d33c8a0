"""The PostgreSQL engine of a store: one bounded pool, its projects, retries.

The store's ``PgEngine`` owns one ``psycopg_pool.AsyncConnectionPool`` (at most
``StoreConfig.pool_size`` connections, ``acquire_timeout`` to get one, else ``PoolTimeout``);
projects are handles on it. Every connection runs with ``statement_timeout``, ``lock_timeout``
(``busy_deadline``) and ``idle_in_transaction_session_timeout`` set, in autocommit mode: each
unit of work sends its own ``BEGIN`` and ``COMMIT``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final, NoReturn, cast

import psycopg
import psycopg_pool
from psycopg import errors as pg
from psycopg import sql
from psycopg.adapt import Dumper

from ..config import StoreConfig
from ..engine import Op, Runner, settle
from ..errors import (
    MigrationError,
    OutcomeUnknown,
    ProjectExists,
    ProjectNotFound,
    SchemaTooNew,
    StorageError,
    StoreError,
)
from ..health import Counters, StoreStats
from ..ids import new_project_id, validate_project_id
from ..repositories import ProjectRepository
from ..revisions import known_revisions
from ..schema import HEAD_REVISION, metadata
from .bundles import Rows, insert_sql, select_sql
from .ddl import SCHEMA, SCOPE, schema_ddl
from .session import PgHandle, run_ops
from .translate import RETRYABLE, translate

__all__ = ["PgEngine", "ProjectRow"]

log = logging.getLogger("demiarch_store")

MIGRATION_LOCK: Final = 0x64656D69  # "demi": pg_advisory_xact_lock key of schema changes
STATEMENT_TIMEOUT_MS: Final = 60_000
IDLE_IN_TRANSACTION_MS: Final = 60_000
_BACKOFF_BASE: Final = 0.002
_BACKOFF_CAP: Final = 0.25
_GROUP_MAX: Final = 64
"""Units of work one group commit takes at most."""
_GROUP_ROWS: Final = 1000
"""Rows after which a group commit takes no more units: big batches commit side by side."""
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(eq=False)
class _Queued:
    """A write-only unit waiting for (or in) a group commit."""

    handle: PgHandle
    ops: list[Op]
    fut: asyncio.Future[None]
    taken: bool = False


@dataclass(frozen=True)
class ProjectRow:
    """A project as its row of ``projects`` describes it."""

    id: str
    name: str
    revision: str
    created_at: datetime
    updated_at: datetime


class _Collect:
    """A runner that only collects writes (a new project's first rows)."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def defer(self, op: Op) -> None:
        self.ops.append(op)


def _options(config: StoreConfig) -> str:
    lock_ms = max(1, int(config.busy_deadline * 1000))
    return (
        f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={lock_ms} "
        f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS} "
        f"-c search_path={SCHEMA}"
    )


class _BoolAsInt(Dumper):
    """Booleans go to the server as 0 and 1: stored as integers, as on SQLite (``ddl``)."""

    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_dumper(bool, _BoolAsInt)


class PgEngine:
    """One store's connections to a PostgreSQL database, and the projects in it."""

    def __init__(self, config: StoreConfig) -> None:
        assert config.database_url is not None
        self.config = config
        self.url = config.database_url
        self.counters = Counters()
        self.closed = False
        self._pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=config.pool_size,
            timeout=config.acquire_timeout,
            open=False,
            name="demiarch",
            kwargs={"autocommit": True, "options": _options(config)},
            configure=_configure,
        )
        self._opening: asyncio.Future[None] | None = None
        self.revision = HEAD_REVISION
        """The database's schema revision (all its projects share the tables)."""
        self._queue: deque[_Queued] = deque()
        self._lanes: set[asyncio.Task[None]] = set()
        self._max_lanes = max(1, config.pool_size // 2)

    @property
    def shown_url(self) -> str:
        """Where the server is, for messages: ``postgresql://user@host:port/dbname``, never a
        password."""
        try:
            parts = psycopg.conninfo.conninfo_to_dict(self.url)
        except psycopg.ProgrammingError:
            return "the configured database_url"
        user = f"{parts['user']}@" if parts.get("user") else ""
        port = f":{parts['port']}" if parts.get("port") else ""
        return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"

    def fail(self, exc: BaseException, project: str | None, action: str) -> NoReturn:
        """Raise the library's error for ``exc`` (``exc`` itself if it is not a driver error)."""
        err = self.translate(exc, project, action)
        if err is exc:
            raise exc
        raise err from exc

    def translate(self, exc: BaseException, project: str | None, action: str) -> BaseException:
        err = translate(exc, project=project, url=self.shown_url, action=action)
        if isinstance(exc, psycopg_pool.PoolTimeout):
            self.counters.pool_timeouts += 1
        return err

    # -- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool and prepare the database (once; concurrent callers wait for it)."""
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        await asyncio.shield(self._opening)

    async def _open(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=self.config.acquire_timeout)
        except psycopg_pool.PoolTimeout as exc:
            await self._pool.close()
            self.closed = True
            raise StorageError(
                "cannot connect to the PostgreSQL server",
                hint=f"check that the server at {self.shown_url} is up, and the URL",
            ) from exc
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close every connection (after the group commits in flight). Idempotent."""
        self.closed = True
        if self._lanes:
            await asyncio.gather(*self._lanes, return_exceptions=True)
        await self._pool.close()

    async def _migrate(self) -> None:
        """Create the tables at head under an advisory lock: one process does it, once.

        The lock is the database's (``pg_advisory_xact_lock``): it holds across hosts, so
        workers starting together wait for the first, then find the tables made.
        """
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                cur = await conn.execute(
                    "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = %s AND (table_name, column_name) IN "
                    "(('alembic_version', 'version_num'), ('projects', 'schema_name'))",
                    (SCHEMA,),
                )
                found = {table for table, _ in await cur.fetchall()}
                if "projects" in found:
                    raise MigrationError(
                        "the database holds projects of an early development version of "
                        "demiarch-store (one schema per project), which this version cannot read",
                        hint="export them as bundles with that version, then import them into "
                        "a new database",
                    )
                if not found:
                    for statement in schema_ddl():
                        await conn.execute(statement.encode())
                    await conn.execute(
                        f"INSERT INTO {SCHEMA}.alembic_version VALUES (%s)", (HEAD_REVISION,)
                    )
                    log.info("created the demiarch tables at %s", HEAD_REVISION)
                    self.revision = HEAD_REVISION
                    return
                cur = await conn.execute(f"SELECT version_num FROM {SCHEMA}.alembic_version")
                row = await cur.fetchone()
                self.revision = HEAD_REVISION if row is None else row[0]
                _check_revision(self.revision, None)
        except (SchemaTooNew, MigrationError):
            raise
        except BaseException as exc:
            self.fail(exc, None, "preparing the database")

    # -- connections --------------------------------------------------------------------------

    async def _get(self) -> psycopg.AsyncConnection[Any]:
        if self.closed:
            raise StoreError("the store is closed", hint="open a new Store")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while True:
            wait = self.config.acquire_timeout - (loop.time() - t0)
            try:
                conn: psycopg.AsyncConnection[Any] = await self._pool.getconn(timeout=wait)
            except psycopg_pool.PoolTimeout as exc:
                self.fail(exc, None, "waiting for a connection")
            if not _lost(conn):
                break
            # The server closed it while it sat in the pool (a restart, a terminated backend):
            # the pool drops it and connects anew, and the unit takes another one.
            await self._pool.putconn(conn)
        self.counters.pool_wait.add(loop.time() - t0)
        return conn

    async def give_back(self, conn: psycopg.AsyncConnection[Any], *, rollback: bool) -> None:
        """Return a connection to the pool (rolled back if still in a transaction)."""
        try:
            if rollback and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await conn.execute("ROLLBACK")
        except psycopg.Error:
            pass  # a broken connection: the pool sees it and drops it
        finally:
            await self._pool.putconn(conn)

    async def begin_locked(self, handle: PgHandle) -> psycopg.AsyncConnection[Any]:
        """Begin a unit that reads: bound to its project, whose row stays locked until it ends."""
        conn = await self._get()
        try:
            # One simple query (no parameters: literals), one round trip.
            cur = await conn.execute(
                _simple(
                    "BEGIN; SELECT set_config('demiarch.project', {}, true), "
                    "set_config('role', 'demiarch_project', true) "
                    "FROM projects WHERE project_id = {} AND id = {} FOR UPDATE",
                    handle.project,
                    handle.project,
                    handle.project,
                ),
                prepare=False,
            )
            cur.nextset()  # past BEGIN's result
            if await cur.fetchone() is None:
                raise ProjectNotFound(
                    "the project was deleted", project=handle.project, hint="create it again"
                )
        except BaseException:
            await self.give_back(conn, rollback=True)
            raise
        return conn

    async def begin_snapshot(self, handle: PgHandle) -> psycopg.AsyncConnection[Any]:
        """Begin a read-only snapshot of a project."""
        conn = await self._get()
        try:
            # One simple query (no parameters: literals), one round trip; SET LOCAL is the
            # set_config(..., true) the server neither plans nor executes as a query.
            await conn.execute(
                _simple(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
                    "SET LOCAL demiarch.project TO {}; SET LOCAL ROLE demiarch_project",
                    handle.project,
                ),
                prepare=False,
            )
        except BaseException as exc:
            await self.give_back(conn, rollback=True)
            self.fail(exc, handle.project, "starting a read")
        return conn

    async def _begin_unit(
        self, conn: psycopg.AsyncConnection[Any], handle: PgHandle, ops: list[Op]
    ) -> None:
        await conn.execute("BEGIN")
        await conn.execute(SCOPE, (handle.project,))
        async with conn.cursor() as cur:
            await run_ops(cur, ops, handle)

    async def run_unit(self, handle: PgHandle, ops: list[Op]) -> None:
        """Commit a write-only unit, grouped with the units queued meanwhile (group commit).

        Up to ``pool_size // 2`` transactions commit at once; units that arrive meanwhile wait
        and go together into the next one, sent in one pipeline (one round trip for all their
        statements, one for the COMMIT). A group that fails before its COMMIT is rolled back
        and each of its units runs alone (``_run_alone``), so one bad unit never sinks others.
        """
        if any(op.missing is not None for op in ops):  # reads a row count: runs alone
            # Its own task: a cancellation waits for the outcome (``engine.settle``).
            await settle(asyncio.ensure_future(self._run_alone(handle, ops)), cancels=0)
            return
        loop = asyncio.get_running_loop()
        item = _Queued(handle, ops, loop.create_future())
        self._queue.append(item)
        if len(self._lanes) < self._max_lanes:
            lane = loop.create_task(self._lane())
            self._lanes.add(lane)
            lane.add_done_callback(self._lanes.discard)
        try:
            await asyncio.shield(item.fut)
        except asyncio.CancelledError:
            if not item.taken:
                self._queue.remove(item)  # never sent: nothing was written
                raise
            # Sent: the server decides. Committed: no error now, the cancellation at the
            # caller's next await; not: CancelledError (``engine.settle``).
            await settle(item.fut, cancels=1)

    async def _lane(self) -> None:
        """Commit queued units, a group at a time, until the queue is empty."""
        while self._queue:
            batch: list[_Queued] = []
            rows = 0
            while self._queue and len(batch) < _GROUP_MAX and rows < _GROUP_ROWS:
                item = self._queue.popleft()
                item.taken = True
                batch.append(item)
                rows += sum(len(op.params) if op.many else 1 for op in item.ops)
            try:
                await self._commit_group(batch)
            except BaseException as exc:  # pragma: no cover - _commit_group settles every unit
                for item in batch:
                    if not item.fut.done():
                        item.fut.set_exception(exc)
                raise

    async def _commit_group(self, batch: list[_Queued]) -> None:
        if len(batch) == 1:
            await self._settle_alone(batch[0])
            return
        try:
            conn = await self._get()
        except BaseException as exc:
            for item in batch:
                item.fut.set_exception(exc)
            return
        committing = False
        try:
            async with conn.pipeline() as pipeline:
                await conn.execute("BEGIN")
                async with conn.cursor() as cur:
                    current = None
                    for item in batch:
                        if item.handle.project != current:  # consecutive units share it
                            current = item.handle.project
                            await cur.execute(SCOPE, (current,))
                        await run_ops(cur, item.ops, item.handle)
                await pipeline.sync()
            committing = True
            await conn.commit()  # (no cursor: the cheapest call)
        except psycopg.OperationalError as exc:
            if committing and exc.sqlstate not in RETRYABLE:
                for item in batch:
                    item.fut.set_exception(_outcome_unknown(item.handle, exc))
                return
        except Exception:
            pass  # rolled back below; each unit runs again alone
        else:
            self.counters.commits += len(batch)
            self.counters.groups += 1
            for item in batch:
                item.fut.set_result(None)
            return
        finally:
            await self.give_back(conn, rollback=True)
        for item in batch:
            await self._settle_alone(item)

    async def _settle_alone(self, item: _Queued) -> None:
        try:
            await self._run_alone(item.handle, item.ops)
        except BaseException as exc:
            if not item.fut.done():
                item.fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not item.fut.done():
                item.fut.set_result(None)

    async def _run_alone(self, handle: PgHandle, ops: list[Op]) -> None:
        """Commit one unit; re-run it whole on 40001/40P01 until ``busy_deadline``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.busy_deadline
        attempt = 0
        while True:
            try:
                conn = await self._get()
            except BaseException as exc:
                self.fail(exc, handle.project, "running a transaction")
            committing = False
            try:
                if all(op.missing is None for op in ops):
                    # One round trip for the unit's statements, one for its COMMIT (an error in
                    # any statement surfaces at the sync, before COMMIT is sent).
                    async with conn.pipeline() as pipeline:
                        await self._begin_unit(conn, handle, ops)
                        await pipeline.sync()
                else:  # a statement that must change a row: its row count is read at once
                    await self._begin_unit(conn, handle, ops)
                committing = True
                await conn.commit()  # (no cursor: the cheapest call)
                self.counters.commits += 1
                return
            except psycopg.OperationalError as exc:
                if committing and exc.sqlstate not in RETRYABLE:
                    raise _outcome_unknown(handle, exc) from exc
                if exc.sqlstate in RETRYABLE and loop.time() < deadline:
                    attempt += 1
                    self.counters.busy_retries += 1
                else:
                    if exc.sqlstate in RETRYABLE:
                        self.counters.busy_errors += 1
                    self.fail(exc, handle.project, "running a transaction")
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self.fail(exc, handle.project, "running a transaction")
            finally:
                await self.give_back(conn, rollback=True)
            delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt) * random.random()
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))

    # -- projects -----------------------------------------------------------------------------

    async def create_project(
        self,
        *,
        name: str,
        description: str | None,
        project_id: str | None,
        rows: Rows | None = None,
    ) -> ProjectRow:
        """Create a project (its record, or an imported bundle's ``rows``) in one transaction."""
        pid = validate_project_id(project_id) if project_id is not None else new_project_id()
        collect = _Collect()
        if rows is None:
            await ProjectRepository(cast(Runner, collect)).create(
                id=pid, name=name, description=description
            )
        else:
            # The project's record first: a taken ID fails there, as ProjectExists.
            tables = sorted(metadata.sorted_tables, key=lambda t: t.name != "projects")
            for table in tables:
                if rows.get(table.name):
                    collect.defer(Op(insert_sql(table.name, "?"), rows[table.name], many=True))
        handle = PgHandle(self, pid, self.config)
        conn = await self._get()
        try:
            await conn.execute("BEGIN")
            await conn.execute(SCOPE, (pid,))
            try:
                async with conn.cursor() as cur:
                    await run_ops(cur, collect.ops, handle)
            except pg.UniqueViolation as exc:
                if exc.diag.constraint_name != "pk_projects":
                    raise
                raise ProjectExists(
                    "a project with this ID already exists",
                    project=pid,
                    hint="open it with open_project(), or pick another ID",
                ) from None
            cur = await conn.execute(
                "SELECT name, created_at, updated_at FROM projects WHERE id = %s", (pid,)
            )
            found = await cur.fetchone()
            if found is None:
                raise StoreError(
                    "the project's rows hold no project record",
                    project=pid,
                    hint="the bundle is incomplete: export the project again",
                )
            await conn.execute("COMMIT")
        except StoreError:
            raise
        except BaseException as exc:
            self.fail(exc, pid, "creating the project")
        finally:
            await self.give_back(conn, rollback=True)
        return _row((pid, *found), self.revision)

    async def dump(self, handle: PgHandle) -> Rows:
        """Read every table of a project in one snapshot (for a bundle)."""
        conn = await self.begin_snapshot(handle)
        try:
            out: Rows = {}
            for table in metadata.sorted_tables:
                cur = await conn.execute(select_sql(table.name))
                out[table.name] = await cur.fetchall()
            return out
        except BaseException as exc:
            self.fail(exc, handle.project, "exporting the project")
        finally:
            await self.give_back(conn, rollback=True)

    async def project(self, project_id: str) -> ProjectRow:
        """Return a project's row; ``ProjectNotFound`` or ``SchemaTooNew`` if unusable."""
        validate_project_id(project_id)
        rows = await self._query(
            f"{_PROJECTS} WHERE project_id = %s AND id = %s", (project_id, project_id), project_id
        )
        if not rows:
            raise ProjectNotFound(
                "no such project in the database",
                project=project_id,
                hint="list the projects with list_projects(), or create it",
            )
        _check_revision(self.revision, project_id)
        return _row(rows[0], self.revision)

    async def projects(self) -> list[ProjectRow]:
        """Return every project, by ID (one index scan of ``projects``)."""
        rows = await self._query(f"{_PROJECTS} ORDER BY project_id", (), None)
        return [_row(r, self.revision) for r in rows]

    async def delete_project(self, project_id: str) -> None:
        """Delete every row of a project in one transaction (after its units that read)."""
        validate_project_id(project_id)
        conn = await self._get()
        try:
            await conn.execute("BEGIN")
            cur = await conn.execute(
                "SELECT 1 FROM projects WHERE project_id = %s AND id = %s FOR UPDATE",
                (project_id, project_id),
            )
            if await cur.fetchone() is None:
                raise ProjectNotFound(
                    "no such project in the database",
                    project=project_id,
                    hint="list the projects with list_projects()",
                )
            async with conn.pipeline():
                for table in reversed(metadata.sorted_tables):
                    await conn.execute(
                        f"DELETE FROM {table.name} WHERE project_id = %s", (project_id,)
                    )
            await conn.execute("COMMIT")
        except StoreError:
            raise
        except BaseException as exc:
            self.fail(exc, project_id, "deleting the project")
        finally:
            await self.give_back(conn, rollback=True)

    async def check_tables(self, handle: PgHandle) -> list[str]:
        """Return what is wrong with the shared tables (missing, or without row security)."""
        rows = await self._query(
            "SELECT c.relname, c.relrowsecurity FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
            (SCHEMA,),
            handle.project,
        )
        secured = {name: bool(rls) for name, rls in rows}
        problems = []
        for table in metadata.sorted_tables:
            if table.name not in secured:
                problems.append(f"the table {SCHEMA}.{table.name} is missing")
            elif not secured[table.name]:
                problems.append(f"the table {SCHEMA}.{table.name} has row-level security off")
        return problems

    async def _query(self, sql: str, params: Any, project: str | None) -> list[Any]:
        conn = await self._get()
        try:
            cur = await conn.execute(sql, params)
            rows: list[Any] = await cur.fetchall()
            return rows
        except BaseException as exc:
            self.fail(exc, project, "reading the list of projects")
        finally:
            await self.give_back(conn, rollback=True)

    def stats(self, in_flight: int = 0) -> StoreStats:
        c = self.counters
        pool = self._pool.get_stats()
        size = pool.get("pool_size", 0)
        return StoreStats(
            commits=c.commits,
            rollbacks=c.rollbacks,
            group_commits=c.groups,
            busy_retries=c.busy_retries,
            database_busy=c.busy_errors,
            pool_timeouts=c.pool_timeouts,
            pool_wait=c.pool_wait.percentiles(),
            transaction_seconds=c.transaction_seconds.percentiles(),
            connections=size,
            connections_in_use=size - pool.get("pool_available", 0),
            in_flight=in_flight,
            checkpoints=0,
            idle_checkpoints=0,
            last_checkpoint=None,
        )

    # -- restore (added for backups on PostgreSQL; self-contained) -------------------------------

    async def replace_rows(self, handle: PgHandle, rows: Rows) -> None:
        """Replace every row of a project with ``rows`` in one transaction: all or nothing.

        A restore: the project's row is locked as by a unit that reads (``begin_locked``), its
        tables are emptied in reverse foreign-key order and refilled with the same statements
        ``create_project(rows=...)`` runs, then it commits. Any failure rolls it all back.
        """
        ops = [Op(f'DELETE FROM "{t.name}"', ()) for t in reversed(metadata.sorted_tables)]
        ops += [
            Op(insert_sql(t.name, "?"), rows[t.name], many=True)
            for t in metadata.sorted_tables
            if rows.get(t.name)
        ]
        conn = await self.begin_locked(handle)
        try:
            async with conn.cursor() as cur:
                await run_ops(cur, ops, handle)
            await conn.execute("COMMIT")
            self.counters.commits += 1
        except StoreError:
            self.counters.rollbacks += 1
            raise
        except BaseException as exc:
            self.counters.rollbacks += 1
            self.fail(exc, handle.project, "restoring the project")
        finally:
            await self.give_back(conn, rollback=True)


def _lost(conn: psycopg.AsyncConnection[Any]) -> bool:
    """True if the server has closed ``conn`` (read without blocking: no round trip)."""
    pgconn = conn.pgconn
    try:
        # What the socket holds: the server's goodbye (a shutdown or termination notice) on the
        # first read, its end of file on the second, which marks the connection bad.
        for _ in range(2):
            if pgconn.status == psycopg.pq.ConnStatus.OK:
                pgconn.consume_input()
    except psycopg.OperationalError:
        return True
    return pgconn.status != psycopg.pq.ConnStatus.OK


@lru_cache(maxsize=4096)
def _simple(template: str, *literals: str) -> bytes:
    """Return ``template`` with ``literals`` quoted in: several statements in one simple query
    (one round trip; the extended protocol takes one statement, and parameters need it)."""
    return sql.SQL(template).format(*map(sql.Literal, literals)).as_bytes(None)


def _outcome_unknown(handle: PgHandle, exc: BaseException) -> OutcomeUnknown:
    err = OutcomeUnknown(
        "the connection to the server was lost during COMMIT: the unit of work may or may not "
        "have been applied",
        project=handle.project,
        hint="read the records to find out before running the unit again",
    )
    err.__cause__ = exc
    return err


_PROJECTS: Final = "SELECT id, name, created_at, updated_at FROM projects"


def _row(r: Any, revision: str) -> ProjectRow:
    return ProjectRow(
        r[0],
        r[1],
        revision,
        _EPOCH + timedelta(microseconds=r[2]),
        _EPOCH + timedelta(microseconds=r[3]),
    )


def _check_revision(revision: str, project: str | None) -> None:
    if revision == HEAD_REVISION:
        return
    if revision not in known_revisions():
        raise SchemaTooNew(
            f"the database is at schema revision {revision!r}, newer than this demiarch-store "
            f"knows (head {HEAD_REVISION!r})",
            project=project,
            hint="upgrade demiarch-store to use it; nothing was modified",
        )
    raise MigrationError(
        f"the database is at schema revision {revision!r}; PostgreSQL databases start at "
        f"{HEAD_REVISION!r} and no PostgreSQL migration leads there from {revision!r}",
        project=project,
        hint="export the projects with an older demiarch-store and import them into a new database",
    )
