"""Bundles: export a consistent snapshot to one file, import it anywhere, refuse damaged ones.

The tests taking ``engine_config`` are about behaviour and run on SQLite and on PostgreSQL
(export from PostgreSQL, import into PostgreSQL); the ones taking ``config`` are about files in
the projects folder (staging, a half-written import) or about the bundle's bytes, and run on
SQLite (test_postgres.py and test_postgres_parity.py move bundles between the engines).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from demiarch_store import (
    AsyncProjectStore,
    BundleError,
    InvalidProjectId,
    ProjectExists,
    Store,
    StoreConfig,
)

pytestmark = pytest.mark.anyio


def _members(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _rewrite(bundle: Path, dest: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dest


DATABASE = "database.sqlite"


def _break_stream(bundle: Path, member: str, tmp: Path) -> Path:
    """Copy ``bundle`` with the first byte of ``member``'s deflate stream set to 0xFF.

    0xFF starts a block of the reserved type 3: zlib refuses it ("invalid block type"),
    whatever the data, while the archive's directory stays intact.
    """
    data = bytearray(bundle.read_bytes())
    with zipfile.ZipFile(bundle) as zf:
        info = zf.getinfo(member)
    assert info.compress_type == zipfile.ZIP_DEFLATED
    name_len, extra_len = (
        int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    data[info.header_offset + 30 + name_len + extra_len] = 0xFF
    out = tmp / f"broken-{member}.zip"
    out.write_bytes(bytes(data))
    return out


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


async def _project_with_data(store: Store, name: str = "exported") -> AsyncProjectStore:
    project = await store.create_project(name=name)
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="planning")
        await tx.messages.append_many(conv.id, [{"role": "user", "content": "hi"}] * 20)
    return project


async def test_export_is_a_consistent_online_snapshot_and_imports_elsewhere(
    tmp_path: Path, engine_config: StoreConfig
) -> None:
    config = engine_config
    async with Store(config) as store:
        project = await _project_with_data(store)
        project_id, revision = project.id, project.revision
        conv_id = (await _conversations(project))[0]
        stop = asyncio.Event()

        async def writer() -> int:  # keeps writing while the snapshot is taken
            n = 0
            while not stop.is_set():
                async with project.transaction() as tx:
                    await tx.messages.append(conv_id, role="tool", content=f"{n}")
                n += 1
                await asyncio.sleep(0)
            return n

        task = asyncio.create_task(writer())
        await asyncio.sleep(0.01)
        bundle = await store.export_project(project_id, tmp_path)
        stop.set()
        written = await task
        if config.database_url is not None:
            # "Elsewhere" on PostgreSQL is the same database once the project has left it.
            await store.delete_project(project_id)
    assert bundle == tmp_path / f"{project_id}.demiarch.zip"
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporaries
    manifest = json.loads(_members(bundle)["manifest.json"])
    assert manifest["project_id"] == project_id and manifest["name"] == "exported"
    assert manifest["revision"] == revision and manifest["format_version"] == 1
    assert len(manifest["sha256"]) == 64 and manifest["created_at"].endswith("+00:00")

    copy_id = f"{project_id}_copy"  # the session's PostgreSQL database is shared by all tests
    async with Store(replace(config, projects_dir=tmp_path / "elsewhere")) as store:
        imported = await store.import_project(bundle)  # keeps its own ID
        assert imported.id == project_id
        renamed = await store.import_project(bundle, project_id=copy_id)
        for copy in (imported, renamed):
            async with copy.read() as r:
                record = await r.projects.get(copy.id)  # the record follows the new ID
                assert record.name == "exported"
                messages = await r.messages.list(conv_id)
            assert [m.content for m in messages[:20]] == ["hi"] * 20
            # A prefix of the writes, in order, without gaps: one consistent snapshot.
            tools = [m.content for m in messages if m.role == "tool"]
            assert tools == [str(n) for n in range(len(tools))] and len(tools) <= written
        infos = {i.id: i.status for i in await store.list_projects()}
        if config.database_url is not None:  # other tests' projects are listed there too
            infos = {k: v for k, v in infos.items() if k in (project_id, copy_id)}
        assert infos == {project_id: "ok", copy_id: "ok"}


async def _conversations(project: AsyncProjectStore) -> list[str]:
    async with project.read() as r:
        return [c.id for c in await r.conversations.list()]


async def _state(store: Store, project: AsyncProjectStore) -> tuple[object, ...]:
    """What a refused import must leave as it was: the projects listed and this one's rows."""
    async with project.read() as r:
        convs = [(c.id, c.title) for c in await r.conversations.list()]
        messages = [(m.id, m.content) for c, _ in convs for m in await r.messages.list(c)]
    listed = sorted((i.id, i.status) for i in await store.list_projects())
    return listed, convs, messages, project.revision


async def test_importing_into_a_taken_id_writes_nothing(
    tmp_path: Path, engine_config: StoreConfig
) -> None:
    config = engine_config
    async with Store(config) as store:
        project = await _project_with_data(store)
        bundle = await store.export_project(project.id, tmp_path / "b.zip")
        # Another project's bundle aimed at this ID: merged rows would show in _state.
        other = await _project_with_data(store, name="other")
        async with other.transaction() as tx:
            await tx.conversations.create(title="only in the other project")
        other_bundle = await store.export_project(other.id, tmp_path / "other.zip")
        await store.delete_project(other.id)
        before = _listing(config.projects_dir), await _state(store, project)
        with pytest.raises(ProjectExists, match=project.id):
            await store.import_project(bundle)
        with pytest.raises(ProjectExists, match=project.id):
            await store.import_project(other_bundle, project_id=project.id)
        with pytest.raises(InvalidProjectId):
            await store.import_project(bundle, project_id="../escape")
        assert (_listing(config.projects_dir), await _state(store, project)) == before
        with pytest.raises(BundleError, match="already exists"):
            await store.export_project(project.id, bundle)


def _bad_bundles(bundle: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    members = _members(bundle)
    db = bytearray(members["database.sqlite"])
    db[len(db) // 2] ^= 0xFF
    manifest = json.loads(members["manifest.json"])
    # A database that matches its manifest but breaks its foreign keys: one flipped bit in the
    # schema text makes messages reference a table that does not exist.
    broken = bytearray(members["database.sqlite"])
    at = broken.find(b"REFERENCES conversations", broken.find(b"CREATE TABLE messages"))
    broken[at + len(b"REFERENCES conversation")] ^= 0x01
    broken_manifest = {**manifest, "sha256": hashlib.sha256(broken).hexdigest()}
    raw = bundle.read_bytes()
    (tmp / "truncated.zip").write_bytes(raw[: len(raw) // 2])
    (tmp / "text.zip").write_text("not a zip at all\n")

    def with_manifest(**changes: object) -> bytes:
        return json.dumps({**manifest, **changes}).encode()

    cases = {
        "tampered": ({**members, "database.sqlite": bytes(db)}, "checksum"),
        "traversal": ({**members, "../../evil.sh": b"echo owned"}, "'../../evil.sh'"),
        "absolute": ({**members, "/tmp/evil": b"x"}, "'/tmp/evil'"),
        "missing-db": ({"manifest.json": members["manifest.json"]}, "exactly"),
        "bad-id": (
            {**members, "manifest.json": with_manifest(project_id="../../x")},
            "invalid project ID",
        ),
        "other-project": (
            {**members, "manifest.json": with_manifest(project_id="someone-else")},
            "does not hold the project",
        ),
        "newer-format": (
            {**members, "manifest.json": with_manifest(format_version=99)},
            "format version 99",
        ),
        "wrong-size": (
            {**members, "manifest.json": with_manifest(size_bytes=12)},
            "size",
        ),
        "not-json": ({**members, "manifest.json": b"{nope"}, "manifest is unreadable"),
        "broken-foreign-keys": (
            {"manifest.json": json.dumps(broken_manifest).encode(), DATABASE: bytes(broken)},
            "foreign keys",
        ),
    }
    out = {
        name: (_rewrite(bundle, tmp / f"{name}.zip", m), words)
        for name, (m, words) in cases.items()
    }
    for member, words in (
        ("manifest.json", "manifest is unreadable"),
        (DATABASE, "cannot be read"),
    ):
        out[f"broken-{member.split('.')[0]}"] = (_break_stream(bundle, member, tmp), words)
    out["truncated"] = (tmp / "truncated.zip", "not a readable bundle")
    out["text"] = (tmp / "text.zip", "not a readable bundle")
    out["missing"] = (tmp / "missing.zip", "no such bundle")
    return out


# SQLite only: about the bundle's bytes and the projects folder (a PostgreSQL import verifies the
# bundle with the same code before it sends a row; test_postgres_parity.py refuses one part-way).
async def test_a_damaged_or_unsafe_bundle_is_refused_and_nothing_is_written(
    tmp_path: Path, config: StoreConfig
) -> None:
    async with Store(config) as store:
        project = await _project_with_data(store)
        bundle = await store.export_project(project.id, tmp_path)
        await store.delete_project(project.id)
        bad = _bad_bundles(bundle, tmp_path)
        outside = _listing(tmp_path.parent)
        before = _listing(config.projects_dir)
        for name, (path, words) in bad.items():
            with pytest.raises(BundleError) as caught:
                await store.import_project(path, project_id=f"into-{name}")
            assert words in str(caught.value), name
            assert str(path) in str(caught.value), name
            assert _listing(config.projects_dir) == before, name
        assert _listing(tmp_path.parent) == outside
        # The good bundle still imports after all that.
        again = await store.import_project(bundle)
        assert again.id == project.id


# SQLite only: a bundle is a file on disk whoever wrote it; the engines trade bundles in
# test_postgres.py.
def test_a_bundle_exported_by_another_process_imports_here(tmp_path: Path) -> None:
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from demiarch_store import Store, StoreConfig\n"
        "async def main():\n"
        "    async with Store(StoreConfig(projects_dir=Path(sys.argv[1]))) as store:\n"
        "        p = await store.create_project(name='from a child', project_id='child')\n"
        "        async with p.transaction() as tx:\n"
        "            await tx.conversations.create(title='made elsewhere')\n"
        "        print(await store.export_project(p.id, Path(sys.argv[2])))\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "theirs"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    bundle = Path(out.stdout.strip())

    async def main() -> None:
        async with Store(StoreConfig(projects_dir=tmp_path / "ours")) as store:
            project = await store.import_project(bundle)
            async with project.read() as r:
                assert [c.title for c in await r.conversations.list()] == ["made elsewhere"]

    asyncio.run(main())
    assert os.listdir(tmp_path / "ours") == ["child"]


# SQLite only: about the files a cancelled import's thread leaves in the projects folder.
@pytest.mark.parametrize("ticks", [0, 1, 2, 5, 20, 200])
async def test_a_cancelled_import_leaves_nothing_behind(
    tmp_path: Path, config: StoreConfig, ticks: int
) -> None:
    async with Store(config) as store:
        project = await _project_with_data(store)
        bundle = await store.export_project(project.id, tmp_path)
        before = _listing(config.projects_dir)
        task = asyncio.create_task(store.import_project(bundle, project_id="cancelled"))
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            assert _listing(config.projects_dir) == before
        else:  # it finished first: then it is whole and open
            assert (await store.open_project("cancelled")).id == "cancelled"


HOLD_STAGING = """
import sys, time
from pathlib import Path
from demiarch_store.backup import Staging
staging = Staging(Path(sys.argv[1]), sys.argv[2])
(staging.path / "database.sqlite").write_bytes(b"half an import")
print(staging.path.name, flush=True)
time.sleep(120)
"""


def _hold_staging(parent: Path, prefix: str) -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_STAGING, str(parent), prefix],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    return child, child.stdout.readline().strip()


def _end(child: subprocess.Popen[str]) -> None:
    child.kill()  # SIGKILL: no cleanup runs
    child.wait(timeout=30)
    assert child.stdout is not None
    child.stdout.close()


def _make_dir(path: Path, *, age_days: float = 0) -> Path:
    path.mkdir()
    (path / "junk").write_bytes(b"x")
    when = os.stat(path).st_mtime - age_days * 86400
    os.utime(path, (when, when))
    return path


# SQLite only: staging folders exist only in a projects folder.
async def test_staging_left_by_a_killed_process_is_removed_and_live_ones_kept(
    tmp_path: Path, config: StoreConfig
) -> None:
    from demiarch_store.backup import Staging

    root = config.projects_dir
    async with Store(config) as store:
        project = await _project_with_data(store)
        bundle = await store.export_project(project.id, tmp_path)

        killed, killed_name = _hold_staging(root, ".import-")
        _end(killed)
        assert killed_name.startswith(f".import-{killed.pid}-")
        assert (root / killed_name / "database.sqlite").exists()  # left behind
        live, live_name = _hold_staging(root, ".import-")
        exports = tmp_path / "exports"
        exports.mkdir()
        killed_export = _make_dir(exports / f".demiarch-export-{killed.pid}-abc")
        held = Staging(root, ".legacy-")  # in use in this process
        try:
            assert not (root / killed_name).exists()  # the live child's Staging removed it
            young = _make_dir(root / f".import-{os.getpid()}-young")  # just made, not locked yet
            reused = _make_dir(root / f".legacy-{live.pid}-reused", age_days=2)  # PID reused
            old_style = _make_dir(root / ".import-nopid1", age_days=2)
            new_old_style = _make_dir(root / ".import-nopid2")
            foreign = _make_dir(root / ".hidden-thing", age_days=2)
            outside = _make_dir(tmp_path / "outside", age_days=2)
            (root / f".import-{killed.pid}-link").symlink_to(outside)

            copy = await store.import_project(bundle, project_id="copy")
            await store.export_project(copy.id, exports)

            hidden = sorted(p.name for p in root.iterdir() if p.name.startswith("."))
            assert hidden == sorted(
                [
                    live_name,
                    held.path.name,
                    young.name,
                    new_old_style.name,
                    foreign.name,
                    f".import-{killed.pid}-link",
                ]
            )
            assert not reused.exists() and not old_style.exists()
            assert (root / live_name / "database.sqlite").exists()  # untouched while in use
            assert (outside / "junk").exists()  # a link is never followed
            assert not killed_export.exists()
            assert sorted(p.name for p in exports.iterdir()) == ["copy.demiarch.zip"]
        finally:
            held.close()
            _end(live)
        assert not held.path.exists()
