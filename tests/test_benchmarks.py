"""The benchmark harness still runs: quick mode on tiny counts, in a real child process.

Nothing here measures speed (that is `make bench`'s job); it only keeps the harness from rotting.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from conftest import PG_ADMIN_URL

ROOT = Path(__file__).resolve().parent.parent


def test_harness_runs_in_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--quick",
        "--duration",
        "0.01",
        "--repeats",
        "1",
        "--concurrency",
        "1,4",
        "--seed-rows",
        "50",
        "--projects",
        "3",
        "--open-projects",
        "2",
        "--no-plot",
        "--workdir",
        str(tmp_path),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    systems = {(c["system"], c["workload"], c["synchronous"]) for c in doc["cells"]}
    for workload in ("W1", "W2", "W3", "W4", "W5", "W6"):
        for system in ("demiarch", "sqlite3", "aiosqlite", "sqlalchemy"):
            assert (system, workload, "NORMAL") in systems
    assert ("demiarch", "W1", "FULL") in systems and ("sqlite3", "W1", "FULL") in systems
    assert all(c["ops"] > 0 for c in doc["cells"])
    raw = [c for c in doc["cells"] if c["system"] == "sqlite3"]
    assert all(c["p50_ms"] > 0 and c["seconds"] > 0 for c in raw)
    ours = [c for c in doc["cells"] if c["system"] in ("demiarch", "sqlite3")]
    assert all(c["errors"] == 0 for c in ours), [c["first_error"] for c in ours]
    assert doc["extras"]["discovery"]["projects"] == 3
    units = doc["extras"]["queries"]  # units of work that read with each query kind, then write
    assert len(units) == 2 * 7 and all(u["demiarch_ops_per_s"] > 0 for u in units)
    assert doc["extras"]["many_open"]["threads_left_after_close"] == 0
    assert "| target |" in (out / "results.md").read_text()


@pytest.mark.parametrize("engine", ["postgresql"])  # "[postgresql" in the ID: needs the server
def test_postgres_harness_runs_in_quick_mode(tmp_path: Path, engine: str) -> None:
    """W1-W5 on the server for every system, ratios and targets written; no timing checked."""
    out = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.postgres",
        "--quick",
        "--duration",
        "0.02",
        "--concurrency",
        "1,4",
        "--seed-rows",
        "20",
        "--projects",
        "3",
        "--admin-url",
        PG_ADMIN_URL,
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((out / "postgres.json").read_text())
    cells = {(c["system"], c["workload"], c["concurrency"]) for c in doc["cells"]}
    for workload in ("W1", "W2", "W3", "W4", "W5"):
        for system in ("demiarch", "psycopg", "sqlalchemy"):
            assert {(system, workload, 1), (system, workload, 4)} <= cells
    assert all(c["ops"] > 0 for c in doc["cells"])
    ours = [c for c in doc["cells"] if c["system"] == "demiarch"]
    assert all(c["errors"] == 0 for c in ours), [c["first_error"] for c in ours]
    assert len(doc["ratios"]) == 10 and all(r["vs_psycopg"] > 0 for r in doc["ratios"])
    assert doc["extras"]["projects"]["projects"] == 3
    checks = {t["target"]: t for t in doc["targets"]}  # (W1, W2 at 64 tasks: not run here)
    assert "W4 vs raw executemany (worst task count)" in checks
    assert checks["demiarch-store errors (every cell)"]["met"]
    text = (out / "postgres.md").read_text()
    assert "| target |" in text and "| W5 | 4 |" in text
    assert len(doc["databases"]) == 3  # one per system, each dropped at the end
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (doc["databases"],)
        ).fetchall()
    assert left == []
