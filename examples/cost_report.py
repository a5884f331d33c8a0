"""A cost report across every project: LLM calls, tokens and exact cost, per project and model.

    python examples/cost_report.py PROJECTS_DIR [--since YYYY-MM-DD]
    python examples/cost_report.py            # a temporary directory with three sample projects

Projects that cannot be read (damaged, newer schema, ...) are listed with the reason instead of
stopping the report. Amounts are Decimal sums of integer nano-dollars: exact, never floats.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from demiarch_store import CostTotal, Store, StoreConfig, StoreError

SAMPLE = {  # project name -> (model, calls, input tokens, output tokens, cost per call)
    "todo app": [
        ("gpt-x", 12, 1500, 400, Decimal("0.00775")),
        ("gpt-x-mini", 30, 900, 200, Decimal("0.000255")),
    ],
    "research notes": [("gpt-x", 4, 8000, 1200, Decimal("0.032"))],
    "side project": [("gpt-x-mini", 7, 500, 120, Decimal("0.000147"))],
}


async def seed(projects_dir: Path) -> None:
    """Make a few projects with recorded LLM calls, so the report has something to show."""
    async with Store(StoreConfig(projects_dir=projects_dir)) as store:
        for name, calls in SAMPLE.items():
            project = await store.create_project(name=name)
            async with project.transaction() as tx:
                for model, count, tokens_in, tokens_out, cost in calls:
                    for _ in range(count):
                        await tx.llm_calls.record(
                            model=model,
                            input_tokens=tokens_in,
                            output_tokens=tokens_out,
                            cost_usd=Decimal(cost),
                        )


async def report(projects_dir: Path, since: datetime | None) -> None:
    console = Console()
    per_project: list[tuple[str, str, list[CostTotal]]] = []
    problems: list[str] = []
    async with Store(StoreConfig(projects_dir=projects_dir)) as store:
        for info in await store.list_projects():
            if info.status != "ok":
                problems.append(f"{info.id}: {info.status} ({info.error})")
                continue
            try:
                project = await store.open_project(info.id)
                async with project.read() as r:
                    totals = await r.llm_calls.totals(by="model", since=since)
                await project.close()  # a report over many projects keeps few open
            except StoreError as exc:
                problems.append(f"{info.id}: {exc}")
                continue
            per_project.append((info.id, info.name or "-", totals))

    table = Table(
        title="LLM costs per project",
        box=box.SIMPLE_HEAVY,
        show_footer=True,
        pad_edge=False,
        collapse_padding=True,
    )
    models: dict[str, list[Decimal | int]] = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    for _, _, totals in per_project:
        for t in totals:
            acc = models[t.key or "-"]
            acc[0] += t.calls
            acc[1] += t.input_tokens
            acc[2] += t.output_tokens
            acc[3] += t.cost_usd
    grand = [sum(m[i] for m in models.values()) for i in range(4)]
    table.add_column("Project", footer="all projects", no_wrap=True)
    table.add_column("Name")
    table.add_column("Calls", justify="right", footer=f"{grand[0]:,}")
    table.add_column("Tokens in", justify="right", footer=f"{grand[1]:,}")
    table.add_column("Tokens out", justify="right", footer=f"{grand[2]:,}")
    table.add_column("Cost (USD)", justify="right", footer=str(grand[3] or Decimal(0)))

    def spent(entry: tuple[str, str, list[CostTotal]]) -> Decimal:
        return sum((t.cost_usd for t in entry[2]), Decimal(0))

    for project_id, name, totals in sorted(per_project, key=spent, reverse=True):
        table.add_row(
            project_id,
            name,
            f"{sum(t.calls for t in totals):,}",
            f"{sum(t.input_tokens for t in totals):,}",
            f"{sum(t.output_tokens for t in totals):,}",
            str(spent((project_id, name, totals))),
        )
    console.print(table)
    console.print(f"{len(per_project)} projects in {projects_dir}", markup=False)
    for model, (calls, _, _, cost) in sorted(models.items()):
        console.print(f"  {model}: {calls:,} calls, {cost} USD")
    for problem in problems:
        console.print(f"  skipped {problem}", style="yellow", markup=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("projects_dir", type=Path, nargs="?")
    parser.add_argument("--since", type=datetime.fromisoformat, help="YYYY-MM-DD (UTC)")
    args = parser.parse_args()
    since = args.since.replace(tzinfo=args.since.tzinfo or UTC) if args.since else None
    if args.projects_dir is not None:
        asyncio.run(report(args.projects_dir, since))
        return
    with tempfile.TemporaryDirectory() as tmp:
        projects_dir = Path(tmp) / "projects"
        asyncio.run(seed(projects_dir))
        asyncio.run(report(projects_dir, since))


if __name__ == "__main__":
    main()
