"""Resume an agent run from its latest checkpoint after the process was killed.

The run has a fixed number of steps. Each step is one unit of work: the step's message, the LLM
call it made, and a checkpoint holding the run's state after the step, committed together. So
whatever moment the process dies at, the latest checkpoint and the work done agree: starting the
script again resumes right after the last committed step, and no step is done twice or lost.

    python examples/resume_run.py PROJECTS_DIR [--steps N] [--delay SECONDS]

Kill it (Ctrl-C, or `kill -9`) half-way and run the same command again to see it resume.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from demiarch_store import AsyncProjectStore, NotFound, ProjectNotFound, Store, StoreConfig

PROJECT_ID = "resume-demo"
RUN_ID = "nightly-refactor"


async def open_or_create(store: Store) -> AsyncProjectStore:
    try:
        return await store.open_project(PROJECT_ID)
    except ProjectNotFound:
        return await store.create_project(name="resume demo", project_id=PROJECT_ID)


async def main(projects_dir: Path, steps: int, delay: float) -> None:
    async with Store(StoreConfig(projects_dir=projects_dir)) as store:
        project = await open_or_create(store)
        async with project.transaction() as tx:  # reads inside: this unit holds the writer
            try:
                checkpoint = await tx.checkpoints.latest(RUN_ID)
            except NotFound:
                conv = await tx.conversations.create(title=f"run {RUN_ID}")
                state: dict[str, Any] = {"conversation": conv.id, "step": 0, "notes": []}
                first = await tx.checkpoints.save(RUN_ID, json.dumps(state).encode())
                parent = first.id
                print(f"starting run {RUN_ID} ({steps} steps)", flush=True)
            else:
                state = json.loads(checkpoint.state)
                parent = checkpoint.id
                print(
                    f"resuming run {RUN_ID} from checkpoint {checkpoint.id} "
                    f"after step {state['step']}",
                    flush=True,
                )

        while state["step"] < steps:
            step = state["step"] + 1
            await asyncio.sleep(delay)  # the agent thinks (or the process gets killed)
            state = {**state, "step": step, "notes": [*state["notes"], f"step {step} ok"][-3:]}
            async with project.transaction() as tx:  # the step and its checkpoint, atomically
                await tx.messages.append(
                    state["conversation"], role="assistant", content=f"step {step} done"
                )
                await tx.llm_calls.record(
                    model="gpt-x-mini",
                    input_tokens=400,
                    output_tokens=100,
                    cost_usd=Decimal("0.00012"),
                    conversation_id=state["conversation"],
                )
                saved = await tx.checkpoints.save(
                    RUN_ID, json.dumps(state).encode(), parent_id=parent, meta={"step": step}
                )
                await tx.checkpoints.prune(RUN_ID, keep=3)  # the latest few are enough
            parent = saved.id
            print(f"step {step} committed", flush=True)

        async with project.read() as r:
            messages = await r.messages.list(state["conversation"])
            spent = await r.llm_calls.total_cost()
            kept = await r.checkpoints.list(RUN_ID)
        done = [m.content for m in messages]
        assert done == [f"step {n} done" for n in range(1, steps + 1)], "a step ran twice"
        print(
            f"run {RUN_ID} complete: {len(done)} steps, each done once; "
            f"{len(kept)} checkpoints kept; cost {spent} USD",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("projects_dir", type=Path)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds of work per step")
    args = parser.parse_args()
    try:
        asyncio.run(main(args.projects_dir, args.steps, args.delay))
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        sys.exit(130)
