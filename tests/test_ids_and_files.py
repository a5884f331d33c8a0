"""Project IDs, paths, file modes and hostile input, on real directories."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from demiarch_store import (
    InvalidProjectId,
    ProjectExists,
    ProjectNotFound,
    Store,
    StoreConfig,
    new_project_id,
    validate_project_id,
)
from demiarch_store.config import default_projects_dir

pytestmark = pytest.mark.anyio

HOSTILE = [
    "../x",
    "..",
    ".",
    "a/b",
    "a\\b",
    "x#y",
    "x?mode=ro",
    "a%2e%2e%2fb",
    "nul\x00byte",
    "",
    "x" * 65,
    "/etc",
    "UPPER",
    "-leading-dash",
    "spa ce",
    "ｆｕｌｌ",
    "a\u2215b",
    "\u2024\u2024",
    "file:x",
]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidProjectId) as info:
        validate_project_id(bad)
    assert "invalid project ID" in str(info.value)


def test_non_string_ids_are_refused() -> None:
    for bad in (None, 1, b"abc", ["a"]):
        with pytest.raises(InvalidProjectId):
            validate_project_id(bad)


def test_generated_ids_are_short_safe_and_sorted() -> None:
    ids = [new_project_id() for _ in range(2000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for project_id in ids[:50]:
        assert validate_project_id(project_id) == project_id
        assert len(project_id) == 16


@pytest.mark.parametrize("bad", HOSTILE)
async def test_hostile_ids_never_touch_the_filesystem(config: StoreConfig, bad: str) -> None:
    async with Store(config) as store:
        for call in (store.open_project, store.delete_project):
            with pytest.raises(InvalidProjectId):
                await call(bad)
        with pytest.raises(InvalidProjectId):
            await store.create_project(name="x", project_id=bad)
    assert not config.projects_dir.exists() or list(config.projects_dir.iterdir()) == []


def test_demiarch_home_moves_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEMIARCH_HOME", str(tmp_path / "home"))
    assert default_projects_dir() == tmp_path / "home" / "projects"
    assert StoreConfig().projects_dir == tmp_path / "home" / "projects"
    monkeypatch.delenv("DEMIARCH_HOME")
    assert default_projects_dir() == Path.home() / ".demiarch" / "projects"


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


async def test_modes_hold_under_umask_000(config: StoreConfig, umask_000: None) -> None:
    async with Store(config) as store:
        project = await store.create_project(name="modes")
        async with project.transaction() as tx:
            await tx.conversations.create(title="t")
        async with project.read() as r:
            await r.conversations.list()
        files = [project.path, Path(f"{project.path}-wal"), Path(f"{project.path}-shm")]
        for f in files:
            assert f.exists(), f
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        for d in (config.projects_dir, project.path.parent):
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


async def test_symlinked_project_directory_is_refused(config: StoreConfig, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    async with Store(StoreConfig(projects_dir=elsewhere)) as other:
        victim = await other.create_project(name="victim", project_id="victim")
        await victim.close()
    config.projects_dir.mkdir(parents=True)
    (config.projects_dir / "victim").symlink_to(elsewhere / "victim")
    async with Store(config) as store:
        with pytest.raises(InvalidProjectId, match="symlink"):
            await store.open_project("victim")
        with pytest.raises(InvalidProjectId, match="symlink"):
            await store.delete_project("victim")
    assert (elsewhere / "victim" / "database.sqlite").exists()


async def test_planted_database_symlink_is_refused(config: StoreConfig, tmp_path: Path) -> None:
    from demiarch_store import StorageError

    target = tmp_path / "target.sqlite"
    target.write_bytes(b"")
    directory = config.projects_dir / "planted"
    directory.mkdir(parents=True)
    (directory / "database.sqlite").symlink_to(target)
    async with Store(config) as store:
        with pytest.raises(StorageError, match="symlink"):
            await store.open_project("planted")
    assert target.read_bytes() == b""


async def test_create_open_delete_errors(config: StoreConfig) -> None:
    async with Store(config) as store:
        await store.create_project(name="a", project_id="fixed-id")
        with pytest.raises(ProjectExists, match="fixed-id"):
            await store.create_project(name="b", project_id="fixed-id")
        with pytest.raises(ProjectNotFound, match="missing"):
            await store.open_project("missing")
        with pytest.raises(ProjectNotFound):
            await store.delete_project("missing")
        await store.delete_project("fixed-id")
        assert not (config.projects_dir / "fixed-id").exists()
