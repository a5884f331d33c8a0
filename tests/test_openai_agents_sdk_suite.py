"""The Agents SDK's own session tests, against DemiarchSession.

The SDK's source distribution on PyPI ships its test suite. This test downloads the one of the
installed version (cached under the virtualenv), extracts its tests into a temporary directory
(nothing of them is kept in this repository), and runs its session test files in a child
pytest with the plugin ``sdk_session_harness``, which hands them a ``DemiarchSession`` wherever
they build a ``SQLiteSession``. The tests below that exercise SQLiteSession's own machinery
rather than the protocol are deselected, each with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
SDK = "openai-agents"
FILES = ["tests/memory/test_session.py", "tests/memory/test_session_limit.py"]

_CONNECTIONS = "SQLiteSession's thread-local sqlite3 connections and their clean-up"
_CORRUPT = (
    "writes invalid JSON into SQLiteSession's own agent_messages table with sqlite3 "
    "(the same behaviour, a message that is not an item skipped, is tested in "
    "test_openai_agents.py)"
)
_LOCKS = "SQLiteSession's sqlite3 write lock, rollback and connection eviction internals"
EXCLUDED: dict[str, str] = {
    "test_await_mutation_cancellation_hides_later_failure_without_loop_error": (
        "tests the SDK's private _await_mutation helper; no session"
    ),
    "test_sqlite_session_close_closes_worker_thread_connections": _CONNECTIONS,
    "test_sqlite_session_reaps_connections_from_exited_worker_threads": _CONNECTIONS,
    "test_sqlite_session_closes_retired_connections_before_the_next_allocation": _CONNECTIONS,
    "test_sqlite_session_keeps_connections_of_live_worker_threads": _CONNECTIONS,
    "test_sqlite_session_closed_rejects_empty_add_items": (
        "SQLiteSession.close(): a DemiarchSession has no close, its project is the caller's"
    ),
    "test_sqlite_session_pop_item_skips_corrupt_most_recent": _CORRUPT,
    "test_sqlite_session_pop_item_returns_none_after_dropping_only_corrupt_rows": _CORRUPT,
    "test_sqlite_session_get_items_limit_skips_corrupt_newest_rows": _CORRUPT,
    "test_sqlite_session_get_items_session_settings_limit_skips_corrupt_rows": _CORRUPT,
    "test_sqlite_session_file_lock_is_shared_across_instances": (
        "SQLiteSession's process-wide lock registry per file"
    ),
    "test_sqlite_session_failed_add_items_releases_write_lock": _LOCKS,
    "test_sqlite_session_failed_clear_session_rolls_back": _LOCKS,
    "test_sqlite_session_failed_pop_item_releases_write_lock": _LOCKS,
    "test_sqlite_session_rollback_failure_evicts_connection": _LOCKS,
    "test_sqlite_session_close_retries_quarantined_connection": _LOCKS,
    "test_sqlite_session_post_commit_cancellation_propagates_after_known_outcome": _LOCKS,
}

INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
"""


def sdist(cache: Path, wanted: str) -> Path:
    """Return the SDK's source distribution of version ``wanted``, downloading it once."""
    name = f"openai_agents-{wanted}.tar.gz"
    path = cache / name
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"{SDK}=={wanted}", "-d", str(cache)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
    assert path.exists(), f"pip did not leave {name} in {cache}"
    return path


def extract_tests(archive: Path, dest: Path) -> Path:
    """Extract the sdist's ``tests/`` tree (only) into ``dest``; return the tree's parent."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.split("/")[1:2] == ["tests"]]
        assert members, "the source distribution ships no tests/"
        tar.extractall(dest, members=members, filter="data")
    [root] = [p for p in dest.iterdir() if p.is_dir()]
    return root


def run_sdk_tests(tmp_path: Path, *args: str) -> tuple[list[str], int, list[str]]:
    """Run the SDK's tests ``args`` with the harness; return the tests run, the sessions built,
    and the tests that built one."""
    wanted = version(SDK)
    cache = Path(os.environ.get("DEMIARCH_SDK_CACHE", Path(sys.prefix) / "sdk-sdists"))
    root = extract_tests(sdist(cache, wanted), tmp_path / "sdk")
    ini = tmp_path / "pytest.ini"
    ini.write_text(INI)
    junit, report = tmp_path / "junit.xml", tmp_path / "harness.txt"
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE),  # for the plugin; the SDK's `tests` package is under root
        "DEMIARCH_HARNESS_REPORT": str(report),
        "OPENAI_AGENTS_DISABLE_TRACING": "1",
    }
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ini), "--rootdir", str(root),
         "-p", "sdk_session_harness", "-p", "no:cacheprovider", "-q",
         f"--junitxml={junit}", *args],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["failures"] == counts["errors"] == counts["skipped"] == 0, counts
    ran = [case.get("name", "") for case in suite.iter("testcase")]
    assert len(ran) == counts["tests"], counts
    first, *users = report.read_text().splitlines()
    constructed, projects = map(int, first.split())
    assert projects <= constructed
    return ran, constructed, users


def test_the_sdk_session_tests_pass_against_demiarch_session(tmp_path: Path) -> None:
    deselect = [arg for name in EXCLUDED for arg in ("--deselect", f"{FILES[0]}::{name}")]
    ran, constructed, users = run_sdk_tests(tmp_path, *deselect, *FILES)
    assert len(ran) >= 50
    assert not {name.split("[")[0] for name in ran} & set(EXCLUDED)
    # The SDK's tests did get our sessions: the harness built them, on real project files.
    assert constructed >= 50 and len(users) >= 40, (constructed, len(users))


RUNNER_FILES = [
    "tests/test_agent_runner.py",
    "tests/test_agent_runner_streamed.py",
    "tests/test_max_turns.py",
    "tests/test_tool_batch_failure_history.py",
    "tests/test_native_tool_failure_history.py",
    "tests/test_tool_failure_boundaries.py",
    "tests/test_soft_cancel.py",
    "tests/test_run_impl_resume_paths.py",
]


def test_the_sdk_runner_tests_with_sessions_pass_against_demiarch_session(tmp_path: Path) -> None:
    """The SDK's Runner tests about sessions (selected by name); those that build a
    SQLiteSession get a DemiarchSession, the others use the SDK's in-memory sessions."""
    ran, constructed, users = run_sdk_tests(tmp_path, "-k", "session or Session", *RUNNER_FILES)
    assert len(ran) >= 150
    assert len(users) >= 15, users
    assert all(u.startswith(tuple(RUNNER_FILES)) for u in users), users
