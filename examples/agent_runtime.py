"""A small agent runtime: several agents, as concurrent tasks, share one project.

Each agent is registered in the project, then takes its turns concurrently with the others. One
turn is one unit of work: the agent's message in the shared conversation, the LLM call that
produced it (tokens and exact cost), and a checkpoint of the agent's state, committed together
or not at all. At the end the runtime reads everything back and prints a Rich summary: turns,
LLM calls, tokens and cost per agent, and the totals per model.

Run it with `make demo` (uses a fresh temporary projects directory) or
`python examples/agent_runtime.py [PROJECTS_DIR]`.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from demiarch_store import AsyncProjectStore, Store, StoreConfig

AGENTS = {"planner": "gpt-x", "coder": "gpt-x-mini", "reviewer": "gpt-x", "tester": "gpt-x-mini"}
"""Agent name -> the model it calls."""

PRICES = {  # USD per million tokens: (input, output)
    "gpt-x": (Decimal("2.50"), Decimal("10.00")),
    "gpt-x-mini": (Decimal("0.15"), Decimal("0.60")),
}
TURNS = 5
MILLION = Decimal(1_000_000)


def fake_llm(name: str, turn: int) -> tuple[str, int, int]:
    """Stand in for a model: a reply and its token counts (deterministic per agent and turn)."""
    rng = random.Random(f"{name}/{turn}")
    return f"{name}: step {turn} done", rng.randint(200, 2000), rng.randint(50, 600)


async def run_agent(
    project: AsyncProjectStore, conversation_id: str, agent_id: str, name: str
) -> None:
    model = AGENTS[name]
    price_in, price_out = PRICES[model]
    parent: str | None = None
    for turn in range(1, TURNS + 1):
        reply, tokens_in, tokens_out = fake_llm(name, turn)
        cost = (tokens_in * price_in + tokens_out * price_out) / MILLION
        async with project.transaction() as tx:  # the turn is committed whole, or not at all
            await tx.messages.append(
                conversation_id, role="assistant", content=reply, meta={"agent": name}
            )
            await tx.llm_calls.record(
                model=model,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                cost_usd=cost,
                agent_id=agent_id,
                conversation_id=conversation_id,
            )
            state = json.dumps({"agent": name, "turn": turn}).encode()
            checkpoint = await tx.checkpoints.save(agent_id, state, parent_id=parent)
            await tx.agents.update_status(agent_id, "done" if turn == TURNS else "working")
        parent = checkpoint.id
        await asyncio.sleep(0)  # let the other agents take their turn


async def main(projects_dir: Path) -> None:
    async with Store(StoreConfig(projects_dir=projects_dir)) as store:
        project = await store.create_project(name="demo: agent runtime")
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="build a todo app")
            await tx.messages.append(conv.id, role="user", content="Build me a todo app.")
            agents = {
                name: await tx.agents.register(name, role=name, config={"model": model})
                for name, model in AGENTS.items()
            }
        await asyncio.gather(
            *(run_agent(project, conv.id, agent.id, name) for name, agent in agents.items())
        )

        async with project.read() as r:  # one consistent snapshot for the whole report
            history = await r.messages.list(conv.id)
            by_agent = {t.key: t for t in await r.llm_calls.totals(by="agent")}
            by_model = await r.llm_calls.totals(by="model")
            total = await r.llm_calls.total_cost()
            latest = {a.id: await r.checkpoints.latest(a.id) for a in agents.values()}
            status = {a.id: (await r.agents.get(a.id)).status for a in agents.values()}

    print(f"project {project.id} at {project.path}")
    print(f"conversation {conv.title!r}: {len(history)} messages")
    for message in history:
        print(f"  [{message.role:>9}] {message.content}")

    console = Console()
    table = Table(
        title="Agent run summary",
        box=box.SIMPLE_HEAVY,
        show_footer=True,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("Agent", footer="total")
    table.add_column("Model")
    table.add_column("Status")
    table.add_column("Calls", justify="right", footer=str(sum(t.calls for t in by_model)))
    table.add_column(
        "Tokens in", justify="right", footer=f"{sum(t.input_tokens for t in by_model):,}"
    )
    table.add_column("out", justify="right", footer=f"{sum(t.output_tokens for t in by_model):,}")
    table.add_column("Cost (USD)", justify="right", footer=str(total))
    table.add_column("Saved")
    for name, agent in agents.items():
        spent = by_agent[agent.id]
        state = json.loads(latest[agent.id].state)
        table.add_row(
            name,
            AGENTS[name],
            status[agent.id],
            str(spent.calls),
            f"{spent.input_tokens:,}",
            f"{spent.output_tokens:,}",
            str(spent.cost_usd),
            f"turn {state['turn']}",
        )
    console.print(table)
    for t in by_model:
        console.print(f"  {t.key}: {t.calls} calls, {t.cost_usd} USD")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(Path(sys.argv[1])))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(Path(tmp) / "projects"))
