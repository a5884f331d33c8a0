"""Configuration: explicit arguments > DEMIARCH_HOME/config.toml > DEMIARCH_HOME defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from demiarch_store import (
    InvalidValue,
    StorageError,
    Store,
    StoreConfig,
    StoreError,
    load_config,
)


def test_defaults_follow_demiarch_home(tmp_path: Path) -> None:
    config = load_config(environ={"DEMIARCH_HOME": str(tmp_path)})
    assert config.projects_dir == tmp_path / "projects"
    assert config.max_readers == StoreConfig(projects_dir=tmp_path).max_readers
    home = load_config(environ={}).projects_dir
    assert home == Path("~/.demiarch/projects").expanduser()


def test_the_config_file_overrides_defaults_and_arguments_override_it(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        'projects_dir = "elsewhere"\nmax_readers = 2\nbusy_deadline = 1\nsynchronous = "FULL"\n'
        "inline_reads = false\ninline_writes = false\n"
    )
    env = {"DEMIARCH_HOME": str(tmp_path)}
    config = load_config(environ=env)
    assert config.projects_dir == tmp_path / "elsewhere"  # relative to the file
    assert (config.max_readers, config.busy_deadline, config.synchronous) == (2, 1, "FULL")
    assert config.inline_reads is False and StoreConfig().inline_reads is True
    assert config.inline_writes is False and StoreConfig().inline_writes is True
    explicit = load_config(environ=env, projects_dir=tmp_path / "mine", max_readers=3)
    assert (explicit.projects_dir, explicit.max_readers) == (tmp_path / "mine", 3)
    assert explicit.synchronous == "FULL"
    (tmp_path / "config.toml").write_text('projects_dir = "~/absolute-ish"\n')
    assert load_config(environ=env).projects_dir == Path("~/absolute-ish").expanduser()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("projects_dir = [", "not valid TOML"),
        ("no_such_setting = 1", "unknown setting 'no_such_setting'"),
        # Gone: a read() always sees every write acknowledged before it (docs/consistency.md).
        ("read_share_window = 0.01", "unknown setting 'read_share_window'"),
        ('max_readers = "4"', "'max_readers'"),
        ("max_readers = true", "'max_readers'"),
        ("inline_reads = 1", "'inline_reads'"),
        ('inline_writes = "yes"', "'inline_writes'"),
        ("projects_dir = 3", "'projects_dir'"),
        ("max_readers = 0", "max_readers must be at least 1"),
    ],
)
def test_a_bad_config_file_is_named_in_the_error(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(StoreError) as caught:
        load_config(environ={"DEMIARCH_HOME": str(tmp_path)})
    assert words in str(caught.value)
    if "must be at least" not in words:
        assert str(tmp_path / "config.toml") in str(caught.value)
    assert caught.value.path == tmp_path / "config.toml" and caught.value.hint


def test_bad_values_are_invalid_value_and_an_unreadable_file_a_storage_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(InvalidValue, match="got 0 and 64"):
        StoreConfig(projects_dir=tmp_path, keep_backups=0)
    with pytest.raises(InvalidValue) as caught:  # the bad value is not from the file
        load_config(environ={"DEMIARCH_HOME": str(tmp_path)}, max_readers=0)
    assert caught.value.path is None
    (tmp_path / "config.toml").mkdir()  # a directory where the file should be
    with pytest.raises(StorageError) as unreadable:
        load_config(environ={"DEMIARCH_HOME": str(tmp_path)})
    assert unreadable.value.path == tmp_path / "config.toml" and unreadable.value.hint


def test_store_without_config_uses_the_environment_in_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('projects_dir = "from-file"\n')
    code = (
        "import asyncio\n"
        "from demiarch_store import Store, StoreConfig\n"
        "async def main():\n"
        "    async with Store() as store:\n"
        "        p = await store.create_project(name='env')\n"
        "        print(p.path)\n"
        "    print(StoreConfig().projects_dir)\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "DEMIARCH_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    created, default = out.stdout.split()
    assert Path(created).parent.parent == tmp_path / "from-file"
    assert Path(default) == tmp_path / "from-file"


def test_store_config_takes_no_environment_when_given_a_directory(tmp_path: Path) -> None:
    assert Store(StoreConfig(projects_dir=tmp_path)).projects_dir == tmp_path
