"""The PostgreSQL engine on the real server: the contract, isolation, retries, lost connections.

Every test here needs the server (DEMIARCH_TEST_DATABASE_URL, default the local one) and runs
in the session's fresh database (conftest.pg_database_url). Without a server these tests are
not collected and one line says so, except with CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import sys
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

import demiarch_store
from demiarch_store import (
    AsyncProjectStore,
    DatabaseBusy,
    InvalidProjectId,
    NotFound,
    NotSupported,
    OutcomeUnknown,
    PoolTimeout,
    ProjectExists,
    ProjectNotFound,
    SchemaTooNew,
    StorageError,
    Store,
    StoreClosed,
    StoreConfig,
    StoreError,
    load_config,
)
from demiarch_store.schema import HEAD_REVISION

pytestmark = pytest.mark.anyio


@pytest.fixture
def pg_config(pg_database_url: str, tmp_path: Path) -> StoreConfig:
    return StoreConfig(
        projects_dir=tmp_path / "unused",
        database_url=pg_database_url,
        busy_deadline=2.0,
        acquire_timeout=5.0,
    )


def test_the_server_answers() -> None:
    """Fails (in CI too) when the server cannot be reached: the PostgreSQL suite must run."""
    import conftest

    assert conftest._pg_reachable() is None, f"no PostgreSQL server at {conftest.PG_ADMIN_URL}"


def test_importing_the_package_does_not_import_psycopg() -> None:
    code = "import sys, demiarch_store; assert 'psycopg' not in sys.modules, 'psycopg imported'"
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert demiarch_store.StoreConfig().database_url is None


def test_the_url_comes_from_the_environment_only_through_load_config() -> None:
    url = "postgresql://someone@db.example:5432/agents"
    assert load_config(environ={"DEMIARCH_DATABASE_URL": url}).database_url == url
    assert load_config(environ={}).database_url is None
    with pytest.raises(demiarch_store.InvalidValue):
        StoreConfig(database_url="mysql://nope")


async def test_contract_flow_on_postgresql(pg_config: StoreConfig) -> None:
    async with Store(pg_config) as store:
        project = await store.create_project(name="my app")
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="planning")
            first = await tx.messages.append(conv.id, role="user", content="hello 100% %s :x ?")
            many = await tx.messages.append_many(conv.id, [{"role": "tool", "content": "."}] * 100)
        async with project.read() as r:
            history = await r.messages.list(conv.id)
            assert [m.id for m in history] == [first.id, *(m.id for m in many)]
            assert await r.messages.get(history[0].id) == first
            assert first.content == "hello 100% %s :x ?"
            page = await r.messages.list(conv.id, limit=10, after=history[4].id)
            assert [m.id for m in page] == [m.id for m in history[5:15]]
            with pytest.raises(NotFound):
                await r.messages.get("nope")
        async with project.transaction() as tx:  # reads, then writes: holds the project's row
            again = await tx.conversations.get(conv.id)
            await tx.conversations.update(again.id, title="renamed")
            assert (await tx.conversations.get(conv.id)).title == "renamed"  # its own write
        # The session's database is shared by this file's tests: look at this project only.
        infos = [i for i in await store.list_projects() if i.id == project.id]
        assert [(i.id, i.name, i.status) for i in infos] == [(project.id, "my app", "ok")]
        assert infos[0].path is None  # rows of the shared tables, not a file
        assert await store.open_project(project.id) is project
        report = await project.check()
        assert report.ok, report.problems
        assert project.stats().commits >= 2
        assert project.path is None
        for attempt in (project.vacuum, project.optimize):  # backups: test_postgres_parity
            with pytest.raises(NotSupported, match="not available on PostgreSQL"):
                await attempt()
        with pytest.raises(ProjectExists):
            await store.create_project(name="again", project_id=project.id)
        with pytest.raises(InvalidProjectId):
            await store.open_project("../etc")
        await store.delete_project(project.id)
        with pytest.raises(StoreClosed):
            project.transaction()
        with pytest.raises(ProjectNotFound):
            await store.open_project(project.id)
        assert project.id not in {i.id for i in await store.list_projects()}


async def test_two_projects_with_the_same_record_ids_never_see_each_other(
    pg_config: StoreConfig,
) -> None:
    async with Store(pg_config) as store:
        a = await store.create_project(name="a")
        b = await store.create_project(name="b")
        for project, value in ((a, "from a"), (b, "from b")):
            async with project.transaction() as tx:
                await tx.memory_items.put("shared/ns", "same-key", {"v": value})
                conv = await tx.conversations.create(title=value)
                await tx.agent_sessions.create("sdk", "same-session", conversation_id=conv.id)
        for project, value in ((a, "from a"), (b, "from b")):
            async with project.read() as r:
                assert (await r.memory_items.get("shared/ns", "same-key")).value == {"v": value}
                assert [c.title for c in await r.conversations.list()] == [value]
        async with a.transaction() as tx:
            await tx.memory_items.delete("shared/ns", "same-key")
        async with b.read() as r:
            assert (await r.memory_items.get("shared/ns", "same-key")).value == {"v": "from b"}
        await store.delete_project(a.id)
        async with b.read() as r:
            assert len(await r.conversations.list()) == 1


async def test_the_server_refuses_a_unit_any_other_projects_rows(
    pg_config: StoreConfig, pg_database_url: str
) -> None:
    """Isolation is the server's, not only the repositories': a transaction bound to one
    project (as every unit of work is) sees no row of another, cannot write one, and cannot
    change one; and check() reports a table whose row-level security was turned off."""
    from demiarch_store.postgres.ddl import SCOPE

    async with Store(pg_config) as store:
        a = await store.create_project(name="a", project_id="team-a-1")  # a hyphen, too
        b = await store.create_project(name="b")
        async with b.transaction() as tx:
            secret = await tx.conversations.create(title="b's secret")
        with psycopg.connect(pg_database_url, autocommit=True) as conn:
            conn.execute("SET search_path = demiarch")
            with conn.transaction():
                conn.execute(SCOPE, (a.id,))
                assert conn.execute("SELECT count(*) FROM conversations").fetchone() == (0,)
                assert (
                    conn.execute(
                        "UPDATE conversations SET title = 'stolen' WHERE id = %s", (secret.id,)
                    ).rowcount
                    == 0
                )
                assert (
                    conn.execute(
                        "DELETE FROM conversations WHERE project_id = %s", (b.id,)
                    ).rowcount
                    == 0
                )
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(SCOPE, (a.id,))
                conn.execute(
                    "INSERT INTO conversations (project_id, id, created_at, updated_at) "
                    "VALUES (%s, 'planted', 0, 0)",
                    (b.id,),
                )
        async with b.read() as r:
            assert [c.title for c in await r.conversations.list()] == ["b's secret"]
        assert (await a.check()).ok
        with psycopg.connect(pg_database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE demiarch.messages DISABLE ROW LEVEL SECURITY")
        try:
            report = await a.check()
            assert not report.ok
            assert report.problems == ("the table demiarch.messages has row-level security off",)
        finally:
            with psycopg.connect(pg_database_url, autocommit=True) as conn:
                conn.execute("ALTER TABLE demiarch.messages ENABLE ROW LEVEL SECURITY")


async def test_a_storm_of_serialization_failures_is_retried_and_applied_once(
    pg_config: StoreConfig, pg_database_url: str
) -> None:
    """The server fails each unit's first attempts with 40001; each is applied exactly once."""
    async with Store(pg_config) as store:
        project = await store.create_project(name="storm")
        with psycopg.connect(pg_database_url, autocommit=True) as admin:
            admin.execute("CREATE SEQUENCE public.storm")
            admin.execute("GRANT USAGE ON SEQUENCE public.storm TO demiarch_project")
            admin.execute(
                f"""CREATE FUNCTION public.storm() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  IF NEW.project_id = '{project.id}' AND nextval('public.storm') % 3 <> 0 THEN
                    RAISE EXCEPTION 'injected' USING ERRCODE = '40001';
                  END IF;
                  RETURN NEW;
                END $$"""
            )
            admin.execute(
                "CREATE TRIGGER storm BEFORE INSERT ON demiarch.conversations "
                "FOR EACH ROW EXECUTE FUNCTION public.storm()"
            )

        async def one(i: int) -> None:
            async with project.transaction() as tx:
                await tx.conversations.create(title=f"c{i}")

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(20))), 60)
        async with project.read() as r:
            titles = sorted(c.title or "" for c in await r.conversations.list())
        assert titles == sorted(f"c{i}" for i in range(20))  # each once
        assert project.stats().busy_retries >= 20

        with psycopg.connect(pg_database_url, autocommit=True) as admin:
            admin.execute("ALTER SEQUENCE public.storm INCREMENT BY 3 RESTART WITH 1")
        try:
            with pytest.raises(DatabaseBusy):  # fails every time: busy_deadline, then DatabaseBusy
                await asyncio.wait_for(one(99), 30)
            async with project.read() as r:
                assert len(await r.conversations.list()) == 20
        finally:  # the tables are shared by this file's tests: take the trigger away
            with psycopg.connect(pg_database_url, autocommit=True) as admin:
                admin.execute("DROP TRIGGER storm ON demiarch.conversations")
                admin.execute("DROP FUNCTION public.storm()")
                admin.execute("DROP SEQUENCE public.storm")


async def test_a_connection_lost_during_commit_is_outcome_unknown(
    pg_config: StoreConfig, pg_database_url: str
) -> None:
    """The server's backend dies inside COMMIT (a deferred trigger ends it): a typed error
    says the outcome is unknown, nothing is retried, and the store goes on working."""
    async with Store(pg_config) as store:
        project = await store.create_project(name="lost")
        with psycopg.connect(pg_database_url, autocommit=True) as admin:
            # SECURITY DEFINER: units run as demiarch_project, which may not end a backend.
            admin.execute(
                """CREATE FUNCTION public.die() RETURNS trigger LANGUAGE plpgsql
                SECURITY DEFINER AS $$
                BEGIN
                  IF NEW.title = 'die' THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
                  RETURN NEW;
                END $$"""
            )
            admin.execute(
                "CREATE CONSTRAINT TRIGGER die AFTER INSERT ON demiarch.conversations "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.die()"
            )
        try:
            await _die_during_commit(project)
        finally:  # the tables are shared by this file's tests: take the trigger away
            with psycopg.connect(pg_database_url, autocommit=True) as admin:
                admin.execute("DROP TRIGGER die ON demiarch.conversations")
                admin.execute("DROP FUNCTION public.die()")


async def _die_during_commit(project: AsyncProjectStore) -> None:
    for reads_first in (False, True):
        with pytest.raises(OutcomeUnknown, match="may or may not"):
            async with project.transaction() as tx:
                if reads_first:
                    await tx.conversations.list()
                await tx.conversations.create(title="die")
        async with project.transaction() as tx:
            await tx.conversations.create(title="fine")
    async with project.read() as r:
        assert sorted(c.title or "" for c in await r.conversations.list()) == ["fine", "fine"]


async def test_a_terminated_connection_is_a_storage_error_then_the_pool_recovers(
    pg_config: StoreConfig, pg_database_url: str
) -> None:
    async with Store(pg_config) as store:
        project = await store.create_project(name="killed")
        with pytest.raises(StorageError):
            async with project.transaction() as tx:
                await tx.conversations.list()  # holds a connection
                with psycopg.connect(pg_database_url, autocommit=True) as admin:
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND state = 'idle in transaction'"
                    )
                await tx.conversations.list()
        for _ in range(3):
            async with project.transaction() as tx:
                await tx.conversations.create(title="after")
        async with project.read() as r:
            assert len(await r.conversations.list()) == 3


async def test_no_connection_within_acquire_timeout_is_pool_timeout(
    pg_database_url: str, tmp_path: Path
) -> None:
    config = StoreConfig(
        projects_dir=tmp_path, database_url=pg_database_url, pool_size=1, acquire_timeout=0.3
    )
    async with Store(config) as store:
        project = await store.create_project(name="tight")
        async with project.read() as r:
            await r.conversations.list()  # holds the only connection
            with pytest.raises(PoolTimeout):
                async with project.read() as other:
                    await other.conversations.list()
        assert project.stats().pool_timeouts == 1


async def test_a_database_at_a_newer_revision_is_schema_too_new(
    pg_config: StoreConfig, pg_database_url: str
) -> None:
    """The revision is the database's (its projects share the tables): a newer one is refused
    when the store opens, and nothing is modified."""
    async with Store(pg_config) as store:
        project = await store.create_project(name="old code")
    with psycopg.connect(pg_database_url, autocommit=True) as admin:
        admin.execute("UPDATE demiarch.alembic_version SET version_num = '9999'")
    try:
        with pytest.raises(SchemaTooNew, match="9999"):
            async with Store(pg_config) as store:
                await store.open_project(project.id)
    finally:
        with psycopg.connect(pg_database_url, autocommit=True) as admin:
            admin.execute(f"UPDATE demiarch.alembic_version SET version_num = '{HEAD_REVISION}'")
            version = admin.execute("SELECT version_num FROM demiarch.alembic_version").fetchall()
    assert version == [(HEAD_REVISION,)]
    async with Store(pg_config) as store:
        assert (await store.open_project(project.id)).name == "old code"


def test_four_processes_prepare_one_database_once(pg_database_url: str, tmp_path: Path) -> None:
    """Four processes open stores on a new database at once: the advisory lock lets one create
    the tables; all then write to one project."""
    import subprocess

    dbname = f"demiarch_race_{os.getpid()}"
    base = pg_database_url.rsplit("/", 1)[0]
    with psycopg.connect(pg_database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    url = f"{base}/{dbname}"
    code = f"""
import asyncio, sys
from demiarch_store import Store, StoreConfig, ProjectExists
async def main():
    config = StoreConfig(projects_dir={str(tmp_path)!r}, database_url={url!r}, busy_deadline=10)
    async with Store(config) as store:
        try:
            project = await store.create_project(name="shared", project_id="shared")
        except ProjectExists:
            project = await store.open_project("shared")
        for i in range(25):
            async with project.transaction() as tx:
                await tx.conversations.create(title=sys.argv[1])
asyncio.run(main())
"""
    try:
        procs = [
            subprocess.Popen([sys.executable, "-c", code, f"p{i}"], stderr=subprocess.PIPE)
            for i in range(4)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()[-2000:]
        with psycopg.connect(url, autocommit=True) as conn:
            count = conn.execute(
                "SELECT count(*) FROM demiarch.conversations WHERE project_id = 'shared'"
            ).fetchone()
            versions = conn.execute("SELECT count(*) FROM demiarch.alembic_version").fetchone()
        assert count == (100,) and versions == (1,)
    finally:
        with psycopg.connect(pg_database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


async def test_a_project_moves_from_postgresql_to_sqlite_and_back(
    pg_config: StoreConfig, tmp_path: Path
) -> None:
    """Created on PostgreSQL, exported, imported into SQLite (the same bundle format), used
    there, exported again and imported into PostgreSQL under a new ID: every record intact."""
    sqlite_config = StoreConfig(projects_dir=tmp_path / "projects")
    async with Store(pg_config) as pg_store:
        project = await pg_store.create_project(name="travelling")
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="t", meta={"k": [1, 2]})
            await tx.messages.append_many(conv.id, [{"role": "user", "content": "m"}] * 50)
            await tx.llm_calls.record(
                model="gpt-x", input_tokens=1, output_tokens=2, cost_usd=Decimal("0.0021")
            )
            await tx.memory_items.put("ns", "key", {"deep": {"x": None}})
        bundle = await pg_store.export_project(project.id, tmp_path / "out/")
    async with Store(sqlite_config) as sqlite_store:
        local = await sqlite_store.import_project(bundle)
        assert local.id == project.id and local.path.is_file()
        async with local.read() as r:
            assert len(await r.messages.list(conv.id)) == 50
            assert (await r.conversations.get(conv.id)).meta == {"k": [1, 2]}
            assert await r.llm_calls.total_cost() == Decimal("0.0021")
        async with local.transaction() as tx:
            await tx.messages.append(conv.id, role="assistant", content="on sqlite")
        assert (await local.check()).ok
        back = await sqlite_store.export_project(local.id, tmp_path / "back/")
    async with Store(pg_config) as pg_store:
        again = await pg_store.import_project(back, project_id="travelled")
        async with again.read() as r:
            history = await r.messages.list(conv.id)
            assert len(history) == 51 and history[-1].content == "on sqlite"
            assert (await r.memory_items.get("ns", "key")).value == {"deep": {"x": None}}
            assert [p.id for p in await r.projects.list()] == ["travelled"]
        with pytest.raises(ProjectExists):
            await pg_store.import_project(back, project_id="travelled")


def test_the_command_line_takes_a_database_url(pg_database_url: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from demiarch_store.cli import cli

    runner = CliRunner()
    base = ["--projects-dir", str(tmp_path / "none"), "--database-url", pg_database_url]
    created = runner.invoke(cli, [*base, "create", "from the cli"])
    assert created.exit_code == 0, created.output
    assert "at the PostgreSQL database" in created.output
    project_id = created.output.split()[2]
    listed = runner.invoke(cli, [*base, "list"])
    assert listed.exit_code == 0, listed.output
    assert project_id in listed.output and "in the PostgreSQL database" in listed.output
    exported = runner.invoke(cli, [*base, "export", project_id, f"{tmp_path}/b/"])
    assert exported.exit_code == 0, exported.output
    imported = runner.invoke(
        cli,
        [
            "--projects-dir",
            str(tmp_path / "local"),
            "import",
            str(tmp_path / "b") + f"/{project_id}.demiarch.zip",
        ],
    )
    assert imported.exit_code == 0, imported.output
    assert (tmp_path / "local" / project_id / "database.sqlite").is_file()
    assert not (tmp_path / "none").exists()  # nothing written to a projects directory


async def test_savepoints_undo_only_their_writes(pg_config: StoreConfig) -> None:
    async with Store(pg_config) as store:
        project = await store.create_project(name="savepoints")
        for reads_first in (False, True):
            async with project.transaction() as tx:
                if reads_first:
                    await tx.conversations.list()
                await tx.conversations.create(title=f"kept {reads_first}")
                with pytest.raises(RuntimeError):
                    async with tx.savepoint():
                        await tx.conversations.create(title="undone")
                        await tx.flush()  # reached the server: ROLLBACK TO undoes it
                        raise RuntimeError
        async with project.read() as r:
            titles = sorted(c.title or "" for c in await r.conversations.list())
        assert titles == ["kept False", "kept True"]


async def test_terminating_the_pools_connections_under_load_loses_no_acknowledged_unit(
    pg_config: StoreConfig, pg_database_url: str
) -> None:
    """32 tasks write (some units read first) while another connection terminates every
    backend of the pool, again and again: each unit either returns, and its row is there, or
    raises a typed StoreError (StorageError or OutcomeUnknown); the store keeps working."""
    async with Store(pg_config) as store:
        project = await store.create_project(name="under fire")
        acknowledged: list[str] = []
        failures: list[BaseException] = []
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            i = 0
            while not stop.is_set():
                title = f"w{w}-{i}"
                i += 1
                try:
                    async with project.transaction() as tx:
                        if w % 2:
                            await tx.conversations.list(limit=1)
                        await tx.conversations.create(title=title)
                except StoreError as exc:
                    assert isinstance(exc, StorageError), exc  # OutcomeUnknown included
                    failures.append(exc)
                else:
                    acknowledged.append(title)

        def terminate() -> int:
            with psycopg.connect(pg_database_url, autocommit=True) as admin:
                row = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND application_name = ''"
                ).fetchone()
                return int(row[0]) if row else 0

        tasks = [asyncio.create_task(writer(w)) for w in range(32)]
        killed = 0
        try:
            for _ in range(6):
                await asyncio.sleep(0.3)
                killed += await asyncio.to_thread(terminate)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert killed > 0 and failures and acknowledged
        async with project.transaction() as tx:  # the pool has replaced its connections
            await tx.conversations.create(title="after")
        async with project.read() as r:
            stored = {c.title for c in await r.conversations.list()}
        assert set(acknowledged) <= stored  # every acknowledged unit survived
        assert len(stored - set(acknowledged) - {"after"}) <= sum(
            isinstance(f, OutcomeUnknown) for f in failures
        )  # a unit that failed is there only if its outcome was unknown


async def test_concurrent_units_share_group_commits_and_a_bad_one_sinks_no_other(
    pg_config: StoreConfig,
) -> None:
    async with Store(pg_config) as store:
        project = await store.create_project(name="groups")
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="c")

        async def one(i: int, bad: int = -1) -> None:
            async with project.transaction() as tx:
                target = "01nosuchconversation" if i == bad else conv.id
                await tx.messages.append(target, role="user", content=f"m{i}")

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(64, 128))), 60)
        assert project.stats().group_commits >= 1  # units really shared transactions
        results = await asyncio.wait_for(
            asyncio.gather(*(one(i, bad=17) for i in range(64)), return_exceptions=True), 60
        )
        failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
        assert failed == [17]
        assert isinstance(results[17], demiarch_store.ConstraintViolation)
        async with project.read() as r:
            contents = sorted(m.content for m in await r.messages.list(conv.id))
        assert contents == sorted(f"m{i}" for i in range(128) if i != 17)


async def test_cancelled_units_are_whole_or_absent(pg_config: StoreConfig) -> None:
    async with Store(pg_config) as store:
        project = await store.create_project(name="cancel")
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="c")
        done: list[int] = []

        async def one(i: int) -> None:
            async with project.transaction() as tx:
                await tx.messages.append_many(conv.id, [{"role": "user", "content": f"u{i}"}] * 3)
            done.append(i)

        tasks = [asyncio.create_task(one(i)) for i in range(48)]
        await asyncio.sleep(0.005)
        for task in tasks[::2]:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        async with project.read() as r:
            counts: dict[str, int] = {}
            for m in await r.messages.list(conv.id):
                counts[m.content] = counts.get(m.content, 0) + 1
        assert set(counts.values()) <= {3}  # a unit is all there or not at all
        # ...and there if and only if its block returned: CancelledError means not applied.
        assert set(counts) == {f"u{i}" for i in done}
        assert any(task.cancelled() for task in tasks)


async def test_langgraph_checkpoints_and_json_filters_answer_as_on_sqlite(
    pg_config: StoreConfig, tmp_path: Path
) -> None:
    """The LangGraph checkpointer and DemiarchStore's filtered search run on PostgreSQL
    (``jsonb`` operators over the documents' text, a UNION typed per column) and answer exactly
    as on SQLite: the same checkpoint tuples, and the same documents for every filter,
    including the cases where a naive translation differs (JSON true against 1, a string
    against a number, keys with quotes, dots or accents, arrays, missing keys, nulls)."""
    from langgraph.checkpoint.base import empty_checkpoint

    from demiarch_store.integrations.langgraph import DemiarchSaver, DemiarchStore

    docs: dict[str, object] = {
        "a": {"x": 1, "s": "1", "b": True, "n": None, 'q"k': 2, "é": "v", "d.k": 3},
        "b": {"x": 1.0, "s": 1, "b": 1, "f": 0.30000000000000004, 'q"k': "2", "é": "w"},
        "c": {"x": True, "s": {"1": 1}, "b": False, "n": 0, "f": 0.3, "0": "zero"},
        "d": {"x": "1", "s": ["1"], "b": "true", "n": "null", "big": 2**62 + 1},
        "e": ["1", "x"],
        "f": "x",
        "g": {},
    }
    filters: list[dict[str, object]] = [
        {"x": 1},
        {"x": 1.0},
        {"x": True},
        {"x": "1"},
        {"s": "1"},
        {"s": 1},
        {"b": True},
        {"b": False},
        {"b": 1},
        {"n": None},
        {"missing": None},
        {"f": 0.30000000000000004},
        {"f": 0.3},
        {'q"k': 2},
        {'q"k': "2"},
        {"é": "v"},
        {"é": None},
        {"d.k": 3},
        {"0": "zero"},
        {"big": 2**62 + 1},
        {"big": 2**62},
        {"x": 1, "b": True},
    ]
    results: dict[str, list[list[str]]] = {}
    tuples: dict[str, list[object]] = {}
    sqlite_config = StoreConfig(projects_dir=tmp_path / "projects")
    for engine, config in (("sqlite", sqlite_config), ("postgresql", pg_config)):
        async with Store(config) as store:
            project = await store.create_project(name="langgraph")
            memory = DemiarchStore(project)
            for key, value in docs.items():
                await memory.aput(("docs",), key, {"v": value} if key in "efg" else value)
            # Documents that are not objects: stored under "v" above; here as they are.
            async with project.transaction() as tx:
                for key in "efg":
                    await tx.memory_items.put("raw", key, docs[key])
            answers = []
            for f in filters:
                found = [i.key for i in await memory.asearch(("docs",), filter=f, limit=50)]
                async with project.read() as r:
                    raw = await r.memory_items.search("raw", filter=f)
                answers.append(sorted(found) + sorted(i.key for i in raw))
            results[engine] = answers
            saver = DemiarchSaver(project)
            config_t = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
            checkpoint = empty_checkpoint()
            checkpoint["channel_values"] = {"messages": ["hi"]}
            checkpoint["channel_versions"] = {"messages": saver.get_next_version(None, None)}
            versions = checkpoint["channel_versions"]
            meta = {"source": "input", "step": -1}
            stored = await saver.aput(config_t, checkpoint, meta, versions)  # type: ignore[arg-type]
            await saver.aput_writes(stored, [("messages", "there")], task_id="task-1")
            got = await saver.aget_tuple(config_t)
            assert got is not None
            assert got.checkpoint["channel_values"] == {"messages": ["hi"]}
            assert got.pending_writes == [("task-1", "messages", "there")]
            listed = [c async for c in saver.alist(None, filter={"source": "input"})]
            assert [c.checkpoint["id"] for c in listed] == [checkpoint["id"]]
            assert [c async for c in saver.alist(None, filter={"step": True})] == []
            tuples[engine] = [got.metadata, got.pending_writes, len(listed)]
    assert results["postgresql"] == results["sqlite"]
    assert tuples["postgresql"] == tuples["sqlite"]
    by_filter = dict(zip(map(repr, filters), results["sqlite"], strict=True))
    assert by_filter[repr({"x": 1})] == ["a", "b"]  # never the JSON true of "c"
    assert by_filter[repr({"s": "1"})] == ["a"]  # never the number of "b", the array of "d"
    assert by_filter[repr({'q"k': 2})] == ["a"]
    assert by_filter[repr({"é": "v"})] == ["a"]
    assert by_filter[repr({"0": "zero"})] == ["c"]  # never the first element of an array
    assert by_filter[repr({"missing": None})] == [*"abcdefg", *"efg"]


@pytest.mark.parametrize("page", ["README.md", "docs/postgresql.md"])
def test_the_postgresql_page_example_runs_as_shown(
    page: str, pg_database_url: str, tmp_path: Path
) -> None:
    """The README's and docs/postgresql.md's example, run against the server: created and
    used on PostgreSQL, exported, imported into SQLite, printing what the page shows."""
    import re
    import subprocess

    page = (Path(__file__).resolve().parent.parent / page).read_text()
    section = page[page.index("<!-- checked by tests/test_postgres.py -->") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    shown = re.search(r"Output.*?:\n\n```text\n(.*?)```", section, re.S)
    assert code and shown
    done = subprocess.run(
        [sys.executable, "-c", code[1], pg_database_url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    ids = set(re.findall(r"projects/(\w+)/database\.sqlite", done.stdout))
    assert len(ids) == 1, done.stdout
    printed = done.stdout.replace(ids.pop(), "PROJECT")
    assert printed == shown[1]


def test_models_and_the_database_agree(pg_config: StoreConfig, pg_database_url: str) -> None:
    """Alembic's comparison of the PostgreSQL model (the shared tables, ``pg_metadata``) with a
    database the store prepared finds nothing to change: tables, columns, types, keys,
    indexes and foreign keys (their ``ON DELETE`` actions included)."""
    import sqlalchemy as sa
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from demiarch_store.postgres.ddl import SCHEMA, pg_metadata

    async def prepare() -> None:
        async with Store(pg_config) as store:
            await store.list_projects()

    asyncio.run(prepare())
    engine = sa.create_engine(pg_database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "include_schemas": True,
                    "include_name": lambda name, kind, _: kind != "schema" or name == SCHEMA,
                },
            )
            assert compare_metadata(context, pg_metadata()) == []
            dropped = sa.MetaData(schema=SCHEMA)
            sa.Table("messages", dropped, autoload_with=conn)
            assert compare_metadata(context, dropped) != []  # the comparison can fail
    finally:
        engine.dispose()


def test_the_many_projects_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/pg_projects.py on 30 projects, in a child process: it runs and writes its
    table (speed is the benchmark's business, never a test's)."""
    import json
    import subprocess

    from conftest import PG_ADMIN_URL

    out = tmp_path / "pg_projects.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.pg_projects", "--projects", "30", "--out", str(out)],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "DEMIARCH_BENCH_DATABASE_URL": PG_ADMIN_URL},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["projects"] == 30 and result["relations"] > 19
    assert "| `list_projects` (discovery)" in out.read_text()


# -- faults of the whole server, and of several processes ----------------------------------------


def _restart_command() -> list[str]:
    """The command that restarts the test server: DEMIARCH_TEST_PG_RESTART if set, else
    ``pg_ctlcluster VERSION NAME restart -m fast`` for the local cluster on the URL's port."""
    import shlex
    import shutil
    import subprocess

    import conftest
    from psycopg.conninfo import conninfo_to_dict

    given = os.environ.get("DEMIARCH_TEST_PG_RESTART", "")
    if given:
        return shlex.split(given)
    params = conninfo_to_dict(conftest.PG_ADMIN_URL)
    port = str(params.get("port", 5432))
    if str(params.get("host", "localhost")) in ("127.0.0.1", "localhost", "::1") and shutil.which(
        "pg_lsclusters"
    ):
        listed = subprocess.run(
            ["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=30
        ).stdout
        for line in listed.splitlines():
            version, name, cluster_port, *_ = line.split()
            if cluster_port == port:
                return ["pg_ctlcluster", version, name, "restart", "-m", "fast"]
    pytest.fail(
        f"cannot restart the PostgreSQL server at {conftest.PG_ADMIN_URL} for the restart test: "
        "set DEMIARCH_TEST_PG_RESTART to a command that restarts it"
    )


def _wait_until_the_server_accepts(url: str, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def _restart(command: list[str], url: str) -> None:
    """Restart the server; return once it accepts connections again (even if the command
    failed: the server must be up when the test ends)."""
    import subprocess

    try:
        done = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
    finally:
        await asyncio.to_thread(_wait_until_the_server_accepts, url, 60)


@pytest.mark.fault
@pytest.mark.timeout(120)
async def test_a_server_restart_under_load_loses_no_acknowledged_unit_and_the_store_reconnects(
    pg_config: StoreConfig, pg_database_url: str
) -> None:
    """16 tasks run units of work (half read first) and 2 take snapshots while the server
    restarts (fast shutdown: every backend ends). Each unit in flight either returns, and its
    row is there, or raises one of our errors (never psycopg's, never a hang); afterwards new
    units succeed on the same Store, without reopening anything."""
    command = _restart_command()
    async with Store(pg_config) as store:
        project = await store.create_project(name="restarted")
        acknowledged: list[str] = []
        failures: list[StoreError] = []
        late: list[StoreError] = []  # failures of units begun once the server was back
        stop = asyncio.Event()
        back = asyncio.Event()
        enough = asyncio.Event()  # set once `wanted` units are acknowledged
        wanted = 100

        async def writer(w: int) -> None:
            i = 0
            while not stop.is_set():
                title = f"w{w}-{i}"
                i += 1
                begun_back = back.is_set()
                try:
                    async with asyncio.timeout(30):  # a unit never hangs on a dead server
                        async with project.transaction() as tx:
                            if w % 2:
                                await tx.conversations.list(limit=1)
                            await tx.conversations.create(title=title)
                except StoreError as exc:
                    assert isinstance(exc, StorageError | DatabaseBusy | PoolTimeout), repr(exc)
                    failures.append(exc)
                    if begun_back:
                        late.append(exc)
                    await asyncio.sleep(0.05)  # the server is away: do not spin
                else:
                    acknowledged.append(title)
                    if len(acknowledged) >= wanted:
                        enough.set()

        async def reader() -> None:
            while not stop.is_set():
                begun_back = back.is_set()
                try:
                    async with asyncio.timeout(30), project.read() as r:
                        await r.conversations.count()
                except StoreError as exc:
                    assert isinstance(exc, StorageError | PoolTimeout), repr(exc)
                    if begun_back:
                        late.append(exc)
                    await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(writer(w)) for w in range(16)]
        tasks += [asyncio.create_task(reader()) for _ in range(2)]
        try:
            await asyncio.wait_for(enough.wait(), 30)
            await _restart(command, pg_database_url)
            back.set()
            wanted = len(acknowledged) + 100
            enough.clear()
            await asyncio.wait_for(enough.wait(), 30)  # going on, without reopening anything
        finally:
            stop.set()
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        assert failures, "no unit was in flight during the restart"
        # Connections the server closed are dropped as they leave the pool, unused: once the
        # server is back, no unit or snapshot fails (the store reconnected by itself).
        assert not late, late
        assert not any(isinstance(f.__cause__, StoreError) for f in failures)

        # Again with the pool idle, holding connections the restart closes: the first units,
        # snapshots and registry reads after it succeed at once on the same store.
        async def read_then_write(title: str) -> None:
            async with project.transaction() as tx:
                await tx.conversations.list(limit=1)
                await asyncio.sleep(0.05)  # hold the connection: the pool opens others
                await tx.conversations.create(title=title)

        await asyncio.gather(*(read_then_write(f"warm {k}") for k in range(6)))
        assert project.stats().connections >= 3
        await _restart(command, pg_database_url)
        assert (await store.open_project(project.id)) is project
        for k in range(3):
            async with project.transaction() as tx:
                await tx.conversations.create(title=f"after {k}")
            async with project.transaction() as tx:
                await tx.conversations.list(limit=1)
                await tx.conversations.create(title=f"after read {k}")
        assert project.id in {i.id for i in await store.list_projects()}
        async with project.read() as r:
            stored = [c.title or "" for c in await r.conversations.list()]
        assert len(stored) == len(set(stored))  # no unit applied twice
        assert set(acknowledged) <= set(stored)  # every acknowledged unit survived
        unknown = sum(isinstance(f, OutcomeUnknown) for f in failures)
        extra = set(stored) - set(acknowledged) - {f"warm {k}" for k in range(6)}
        extra -= {f"after {k}" for k in range(3)} | {f"after read {k}" for k in range(3)}
        assert len(extra) <= unknown  # a unit that failed is there only if its outcome was unknown


@pytest.mark.fault
def test_four_processes_writing_one_project_lose_nothing(
    pg_config: StoreConfig, pg_database_url: str
) -> None:
    """4 OS processes append to one conversation at once (every third unit reads first, taking
    the project's lock; the others go through group commit): every acknowledged unit is there,
    once, in each process's order, and nothing else."""
    import subprocess

    async def prepare() -> tuple[str, str]:
        async with Store(pg_config) as store:
            project = await store.create_project(name="four processes")
            async with project.transaction() as tx:
                conv = await tx.conversations.create(title="shared")
            return project.id, conv.id

    project_id, conv_id = asyncio.run(prepare())
    child = str(Path(__file__).parent / "pg_writer.py")
    procs = [
        subprocess.Popen(
            [sys.executable, child, pg_database_url, project_id, conv_id, f"p{n}", "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(4)
    ]
    acked: list[str] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()[-2000:]
            acked += [line.split()[1] for line in out.decode().splitlines()]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    assert len(acked) == len(set(acked)) == 240

    async def check() -> None:
        async with Store(pg_config) as store:
            project = await store.open_project(project_id)
            async with project.read() as r:
                stored = await r.messages.list(conv_id)
                assert await r.messages.count(conv_id) == 240
        assert sorted(m.id for m in stored) == sorted(acked)  # exactly the acknowledged ones
        for n in range(4):  # each process's units in its order (IDs grow within a process)
            mine = [m.content for m in stored if m.content.startswith(f"p{n}:")]
            assert mine == [f"p{n}:{i}" for i in range(60)]

    asyncio.run(check())


async def test_an_unreachable_server_is_named_without_its_password(tmp_path: Path) -> None:
    """The error names the server (user, host, port, database) so it can be fixed, and never
    the password of the URL."""
    config = StoreConfig(
        projects_dir=tmp_path,
        database_url="postgresql://agent:s3cret-pw@127.0.0.1:1/agents",
        acquire_timeout=1.0,
    )
    with pytest.raises(StorageError) as caught:
        async with Store(config) as store:
            await store.list_projects()
    shown = str(caught.value)
    assert "postgresql://agent@127.0.0.1:1/agents" in shown
    assert "s3cret-pw" not in shown and "s3cret-pw" not in repr(caught.value)
