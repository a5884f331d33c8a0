"""Framework sessions, side by side in one run: `python -m benchmarks.sessions [--quick]`.

Agents SDK turn: ``add_items`` of 2 items, then ``get_items(limit=20)``; DemiarchSession against
the SDK's SQLiteSession, AsyncSQLiteSession and SQLAlchemySession (sqlite+aiosqlite).
ADK turn: ``append_event``, then ``get_session``; DemiarchSessionService against ADK's
SqliteSessionService and DatabaseSessionService (sqlite+aiosqlite).

Each cell runs ``concurrency`` sessions at once (one task each, its own session ID) taking turns
back to back for a fixed time, on a fresh database file; the median of ``repeats`` runs is
reported with p50/p99 latency per turn and the errors (a turn that raised). Ratios are
demiarch's throughput over each baseline's. Results: ``benchmarks/results/sessions.json`` and
``sessions.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
Turn = Callable[[], Awaitable[None]]
Factory = Callable[[Path, int, AsyncExitStack], Awaitable[list[Turn]]]


# -- Agents SDK --------------------------------------------------------------------------------


def _items(i: int, n: int) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": f"session {i} turn {n}: " + "x" * 200},
        {"role": "assistant", "content": f"answer {n}: " + "y" * 200},
    ]


def _sdk_turns(sessions: list[Any]) -> list[Turn]:
    def make(i: int, session: Any) -> Turn:
        count = 0

        async def turn() -> None:
            nonlocal count
            await session.add_items(_items(i, count))
            count += 1
            await session.get_items(limit=20)

        return turn

    return [make(i, s) for i, s in enumerate(sessions)]


async def sdk_demiarch(db: Path, n: int, stack: AsyncExitStack) -> list[Turn]:
    from demiarch_store import AsyncProjectStore
    from demiarch_store.integrations.openai_agents import DemiarchSession

    project = await stack.enter_async_context(AsyncProjectStore(db))
    return _sdk_turns([DemiarchSession(f"s{i}", project) for i in range(n)])


async def sdk_sqlite(db: Path, n: int, stack: AsyncExitStack) -> list[Turn]:
    from agents import SQLiteSession

    sessions = [SQLiteSession(f"s{i}", db) for i in range(n)]
    for s in sessions:
        stack.callback(s.close)
    return _sdk_turns(sessions)


async def sdk_async_sqlite(db: Path, n: int, stack: AsyncExitStack) -> list[Turn]:
    from agents.extensions.memory.async_sqlite_session import AsyncSQLiteSession

    sessions = [AsyncSQLiteSession(f"s{i}", db) for i in range(n)]
    for s in sessions:
        stack.push_async_callback(s.close)
    return _sdk_turns(sessions)


async def sdk_sqlalchemy(db: Path, n: int, stack: AsyncExitStack) -> list[Turn]:
    from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{db}")
    stack.push_async_callback(engine.dispose)
    sessions = [SQLAlchemySession(f"s{i}", engine=engine, create_tables=True) for i in range(n)]
    return _sdk_turns(sessions)


# -- ADK ---------------------------------------------------------------------------------------


async def _adk_turns(service: Any, n: int) -> list[Turn]:
    from google.adk.events import Event
    from google.genai import types

    def make(i: int, session: Any) -> Turn:
        current = session
        count = 0

        async def turn() -> None:
            nonlocal current, count
            text = types.Content(
                role="user", parts=[types.Part(text=f"turn {count}: " + "x" * 200)]
            )
            await service.append_event(current, Event(author="user", content=text))
            count += 1
            current = await service.get_session(
                app_name="bench", user_id=f"u{i % 8}", session_id=current.id
            )

        return turn

    sessions = [
        await service.create_session(app_name="bench", user_id=f"u{i % 8}", session_id=f"s{i}")
        for i in range(n)
    ]
    return [make(i, s) for i, s in enumerate(sessions)]


async def adk_demiarch(db: Path, n: int, stack: AsyncExitStack) -> list[Turn]:
    from demiarch_store import AsyncProjectStore
    from demiarch_store.integrations.adk import DemiarchSessionService

    project = await stack.enter_async_context(AsyncProjectStore(db))
    return await _adk_turns(DemiarchSessionService(project), n)


async def adk_sqlite(db: Path, n: int, stack: AsyncExitStack) -> list[Turn]:
    from google.adk.sessions.sqlite_session_service import SqliteSessionService

    service = SqliteSessionService(str(db))
    stack.push_async_callback(service.close)
    return await _adk_turns(service, n)


async def adk_database(db: Path, n: int, stack: AsyncExitStack) -> list[Turn]:
    from google.adk.sessions.database_session_service import DatabaseSessionService

    service = DatabaseSessionService(f"sqlite+aiosqlite:///{db}")
    stack.push_async_callback(service.close)
    return await _adk_turns(service, n)


SUITES: dict[str, dict[str, Factory]] = {
    "Agents SDK turn (add_items x2, get_items(20))": {
        "DemiarchSession": sdk_demiarch,
        "SQLiteSession": sdk_sqlite,
        "AsyncSQLiteSession": sdk_async_sqlite,
        "SQLAlchemySession": sdk_sqlalchemy,
    },
    "ADK turn (append_event, get_session)": {
        "DemiarchSessionService": adk_demiarch,
        "SqliteSessionService": adk_sqlite,
        "DatabaseSessionService": adk_database,
    },
}


async def run_cell(factory: Factory, concurrency: int, duration: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with AsyncExitStack() as stack:
            turns = await factory(Path(tmp) / "db.sqlite", concurrency, stack)
            for turn in turns:  # warm: each session exists before the clock starts
                await turn()
            latencies: list[float] = []
            errors: list[str] = []
            deadline = time.perf_counter() + duration

            async def worker(turn: Turn) -> None:
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    try:
                        await turn()
                    except Exception as exc:  # counted, as a user would see it
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                        continue
                    latencies.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker(t) for t in turns))
            elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "turns_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


async def main(quick: bool, out: Path) -> None:
    logging.disable(logging.WARNING)  # the baselines log per call under load
    from agents import set_tracing_disabled

    set_tracing_disabled(True)
    duration, repeats = (0.3, 1) if quick else (2.0, 3)
    results: list[dict[str, Any]] = []
    for suite, systems in SUITES.items():
        for concurrency in (1, 8, 64):
            for system, factory in systems.items():
                runs = [await run_cell(factory, concurrency, duration) for _ in range(repeats)]
                runs.sort(key=lambda r: r["turns_per_s"])
                cell = dict(runs[len(runs) // 2])
                cell.update(
                    suite=suite,
                    system=system,
                    concurrency=concurrency,
                    runs=[round(r["turns_per_s"], 1) for r in runs],
                )
                results.append(cell)
                rate = cell["turns_per_s"]
                print(f"{suite[:10]} c={concurrency:<3} {system:<24} {rate:8.1f}/s", flush=True)
    write(out, results)
    print(table(results))


def write(out: Path, results: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sessions.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "sessions.md").write_text(table(results))


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    for suite in SUITES:
        mine = [r for r in results if r["suite"] == suite]
        ours = next(iter(SUITES[suite]))
        lines += [f"### {suite}", "",
                  "| concurrency | system | turns/s | p50 ms | p99 ms | errors | demiarch x |",
                  "|---:|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for c in (1, 8, 64):
            row = [r for r in mine if r["concurrency"] == c]
            base = next(r for r in row if r["system"] == ours)["turns_per_s"]
            for r in row:
                ratio = "" if r["system"] == ours else f"{base / r['turns_per_s']:.1f}x"
                if r["turns_per_s"] == 0:
                    ratio = "inf"
                p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}"
                p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.2f}"
                lines.append(
                    f"| {c} | {r['system']} | {r['turns_per_s']:.0f} | {p50} | {p99} "
                    f"| {r['errors']} | {ratio} |"
                )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run in seconds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.out))
