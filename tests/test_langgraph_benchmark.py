"""The LangGraph benchmark still runs: quick mode on tiny counts, in a real child process.

Nothing here measures speed (that is `make bench`'s job); it keeps the harness from rotting.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_langgraph_benchmark_runs_in_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmarks.langgraph", "--quick", "--duration", "0.05"]
    cmd += ["--concurrency", "1,4", "--checkpoints", "20", "--workdir", str(tmp_path)]
    cmd += ["--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((out / "langgraph.json").read_text())
    cells = {(c["workload"], c["state"], c["threads"]) for c in doc["cells"]}
    assert cells == {
        ("superstep", "small", 1),
        ("superstep", "small", 4),
        ("superstep", "realistic", 1),
        ("superstep", "realistic", 4),
        ("alist", "", 0),
    }
    for c in doc["cells"]:
        assert c["demiarch"]["ops"] > 0 and c["AsyncSqliteSaver"]["ops"] > 0
        assert c["ratio"] > 0
    assert "| alist of 20 |" in (out / "langgraph.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("lg-bench-")]  # cleaned up


@pytest.mark.parametrize("engine", ["postgresql"])  # (named so: not collected without a server)
def test_langgraph_benchmark_runs_on_postgresql_in_quick_mode(
    tmp_path: Path, pg_database_url: str, engine: str
) -> None:
    """The PostgreSQL section: DemiarchSaver against LangGraph's AsyncPostgresSaver, each on a
    fresh database the run creates on the server and drops."""
    import psycopg

    def benches() -> set[str]:
        with psycopg.connect(pg_database_url, autocommit=True) as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'lgbench%'")
            return {name for (name,) in rows}

    before = benches()
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmarks.langgraph", "--quick", "--engine", engine]
    cmd += ["--duration", "0.05", "--concurrency", "1,4", "--checkpoints", "20"]
    cmd += ["--database-url", pg_database_url, "--workdir", str(tmp_path), "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((out / "langgraph_postgres.json").read_text())
    assert doc["engine"] == "postgresql" and doc["baseline"] == "AsyncPostgresSaver"
    assert "database_url" not in doc["settings"]  # a URL may hold a password
    cells = {(c["workload"], c["state"], c["threads"]) for c in doc["cells"]}
    assert cells == {
        ("superstep", "small", 1),
        ("superstep", "small", 4),
        ("superstep", "realistic", 1),
        ("superstep", "realistic", 4),
        ("alist", "", 0),
    }
    for c in doc["cells"]:
        assert c["demiarch"]["ops"] > 0 and c["AsyncPostgresSaver"]["ops"] > 0
        assert c["ratio"] > 0
    assert "| AsyncPostgresSaver |" in (out / "langgraph_postgres.md").read_text()
    assert benches() <= before  # every database the run made was dropped
