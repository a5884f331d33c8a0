"""The ``demiarch-store`` command line: see, check and drive the projects of a store.

Built on Click, with Rich for tables and progress. Each command runs one ``asyncio.run`` over a
``Store``. A ``StoreError`` becomes one line on stderr (what, project, path, what to do) and exit
code 1; usage errors, including a malformed project ID, exit 2; ``--debug`` adds the traceback.
Machine output (``--json``) goes to stdout; progress bars go to stderr and only to a terminal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shlex
import sqlite3
import sys
import traceback
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from .config import StoreConfig, load_config
from .errors import (
    CorruptDatabase,
    InvalidProjectId,
    ProjectExists,
    ProjectHealthy,
    ProjectNotFound,
    StorageError,
    StoreError,
)
from .ids import validate_project_id
from .migrate import HEAD_REVISION, known_revisions
from .project import AsyncProjectStore
from .schema import from_nanos, to_nanos
from .store import (
    ProjectInfo,
    Store,
    database_problem,
    describe,
    good_backup,
    not_projects,
    project_files,
    refuse_foreign,
    row_counts,
)

if TYPE_CHECKING:
    from .legacy import LegacyImportReport
    from .repositories import Grouping

__all__ = ["cli", "main"]

T = TypeVar("T")

PROG = "demiarch-store"

_STATUS_STYLE = {
    "ok": "green",
    "empty": "yellow",
    "corrupt": "bold red",
    "newer_schema": "magenta",
    "unreadable": "red",
}

_STATUS_TODO = {
    "empty": "restore a backup into it or delete it",
    "corrupt": "check it, then `quarantine {id}` (puts its newest good backup back) or delete it",
    "newer_schema": "upgrade demiarch-store to open it",
    "unreadable": "check the permissions of its directory and files",
}
"""What a person can do about a project that is not ``ok``."""


_PIPE_WIDTH = 100_000
"""Output that is not a terminal is never wrapped or cut: lines are as long as they need."""


def _console(*, stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console = Console(stderr=stderr, highlight=False, width=_PIPE_WIDTH)
    return console


@dataclass
class State:
    """What the global options set, shared by every command of one invocation."""

    projects_dir: Path | None = None
    database_url: str | None = None
    debug: bool = False
    as_json: bool = False
    out: Console = field(default_factory=_console)
    err: Console = field(default_factory=lambda: _console(stderr=True))
    log_handler: logging.Handler | None = None

    def config(self) -> StoreConfig:
        """Return the store's settings: ``load_config()`` (``$DEMIARCH_HOME/config.toml``),
        with ``--projects-dir`` and ``--database-url`` over it when given."""
        given: dict[str, Any] = {}
        if self.projects_dir is not None:
            given["projects_dir"] = self.projects_dir
        if self.database_url is not None:
            given["database_url"] = self.database_url
        return load_config(**given)

    def require_projects_dir(self, project_id: str | None = None) -> Path:
        """Return the projects directory; a read command must not take a missing one for empty."""
        config = self.config()
        directory = config.projects_dir
        if config.database_url is None and not directory.is_dir():
            what = "is not a directory" if directory.exists() else "does not exist"
            raise ProjectNotFound(
                ("no such project: " if project_id else "") + f"the projects directory {what}",
                project=project_id,
                path=directory,
                hint="check --projects-dir (or DEMIARCH_HOME and its config.toml)"
                + (
                    f": `{self.cli_hint('list')}` lists the projects of the same directory"
                    if project_id
                    else f"; `{self.cli_hint('create NAME')}` creates it with a first project"
                ),
            )
        return directory

    def show(self, table: Table) -> None:
        """Print a table without ever cutting a cell: long cells wrap; if even that cannot fit
        the terminal, each row is printed as plain ``Header: value`` lines."""
        for column in table.columns:
            if column.overflow == "ellipsis":
                column.overflow = "fold"
        out = self.out
        # Measured as if the terminal were unbounded: Measurement.get clamps to its width.
        need = Measurement.get(out, out.options.update_width(_PIPE_WIDTH), table).minimum
        if need <= out.width:
            out.print(table, crop=False)
            return
        headers = [str(c.header) if c.header else "" for c in table.columns]
        cells = [list(c.cells) for c in table.columns]
        if table.show_footer:
            cells = [[*col, c.footer or ""] for col, c in zip(cells, table.columns, strict=True)]
        for i in range(len(cells[0]) if cells else 0):
            for header, values in zip(headers, cells, strict=True):
                value = values[i]
                text = value.plain if isinstance(value, Text) else str(value)
                if text:
                    line = f"{header}: {text}" if header else text
                    out.print(line, markup=False, soft_wrap=True, highlight=False)
            out.print()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one command's async work to completion."""
        return asyncio.run(coro)

    def cli_hint(self, command: str) -> str:
        """Return a command line to suggest, repeating ``--projects-dir`` if it was given."""
        if self.projects_dir is None:
            return f"{PROG} {command}"
        return f"{PROG} --projects-dir {_quote(str(self.projects_dir))} {command}"

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Progress]:
        """Show a progress bar on stderr when it is a terminal (nothing otherwise)."""
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[item]}"),
            console=self.err,
            transient=True,
            disable=not self.err.is_terminal,
        )
        with bar:
            bar.add_task(description, total=total, item="")
            yield bar

    def spinner(self, message: str) -> AbstractContextManager[Any]:
        """Show a spinner on stderr while slow work runs, when stderr is a terminal."""
        if not self.err.is_terminal:
            return nullcontext()
        return self.err.status(message)


def _quote(text: str) -> str:
    return shlex.quote(text)


def _project_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Validate a project ID before anything touches the file system (a usage error if bad)."""
    try:
        return validate_project_id(value)
    except InvalidProjectId:
        raise click.BadParameter(
            f"{value!r} is not a project ID: IDs are lowercase letters, digits, '-' and '_' "
            f"(run `{PROG} list` to see them)",
            ctx=ctx,
            param=param,
        ) from None


def _optional_project_id(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    return None if value is None else _project_id(ctx, param, value)


project_id_argument = click.argument("project_id", metavar="ID", callback=_project_id)


def _existing_dir(state: State, store: Store, project_id: str) -> Path:
    """Return the project's directory, or raise ``ProjectNotFound`` saying how to list them."""
    if store.config.database_url is not None:  # no folder: opening the project checks it
        return store.projects_dir
    state.require_projects_dir(project_id)
    try:
        return store._existing(project_id).parent
    except ProjectNotFound as exc:
        raise ProjectNotFound(
            exc.message,
            project=project_id,
            path=exc.path,
            hint=f"run `{state.cli_hint('list')}` to see the projects"
            + ("; the folder was left as it is" if exc.message != "no such project" else ""),
        ) from None


def _json_flag(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """``--json`` after the command, or before it (the group's option)."""
    state = ctx.find_object(State)
    return value or (state is not None and state.as_json)


json_option = click.option(
    "--json", "as_json", is_flag=True, callback=_json_flag, help="Print JSON for machines."
)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _when(value: datetime | None, *, seconds: bool = True) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    amount = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        amount /= 1024
        if amount < 1024 or unit == "TiB":
            break
    return f"{amount:.1f} {unit}"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# -- the group ----------------------------------------------------------------------------------


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--projects-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Projects directory (default: $DEMIARCH_HOME/projects, else ~/.demiarch/projects).",
)
@click.option(
    "--database-url",
    metavar="URL",
    help="Keep the projects in this PostgreSQL database (default: $DEMIARCH_DATABASE_URL).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for machines (also after the command)."
)
@click.version_option(package_name="demiarch-store", prog_name=PROG)
@click.pass_context
def cli(
    ctx: click.Context,
    projects_dir: Path | None,
    database_url: str | None,
    debug: bool,
    as_json: bool,
) -> None:
    """See, check and drive demiarch-store projects: one SQLite database per project, or a
    PostgreSQL database (--database-url) holding them all."""
    state = ctx.ensure_object(State)
    state.projects_dir = projects_dir
    state.database_url = database_url
    state.debug = debug
    state.as_json = as_json
    # The library's warnings (a slow unit of work, a quarantine) become "warning: ..." lines;
    # --debug shows its debug log too.
    state.log_handler = logging.StreamHandler(sys.stderr)
    fmt = "debug: %(name)s: %(levelname)s: %(message)s" if debug else "warning: %(message)s"
    state.log_handler.setFormatter(logging.Formatter(fmt))
    log = logging.getLogger("demiarch_store")
    log.addHandler(state.log_handler)
    log.setLevel(logging.DEBUG if debug else logging.WARNING)
    # psycopg_pool logs each failed connection attempt; our one error line says it once.
    logging.getLogger("psycopg.pool").setLevel(logging.DEBUG if debug else logging.CRITICAL)


pass_state = click.make_pass_decorator(State, ensure=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 error, 2 usage, 130 interrupted)."""
    state = State()
    try:
        return _main(argv, state)
    finally:
        if state.log_handler is not None:
            log = logging.getLogger("demiarch_store")
            log.removeHandler(state.log_handler)
            log.setLevel(logging.NOTSET)


def _main(argv: Sequence[str] | None, state: State) -> int:
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name=PROG,
            standalone_mode=False,
            obj=state,
        )
    except click.exceptions.Abort as exc:
        why = exc.__cause__ or exc.__context__
        if isinstance(why, KeyboardInterrupt):
            click.echo("\nInterrupted.", err=True)
            return 130
        # After end of input at a prompt the cursor still sits on the prompt's line.
        click.echo(("\n" if isinstance(why, EOFError) else "") + "Aborted.", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except StoreError as exc:
        if state.debug:
            traceback.print_exc()
        click.secho(f"error: {_for_the_command_line(exc)}", err=True, fg="red")
        return 1
    except Exception as exc:
        if state.debug:
            traceback.print_exc()
        click.secho(
            f"error: unexpected {type(exc).__name__}: {exc} "
            f"(run again with --debug for the traceback, and please report it)",
            err=True,
            fg="red",
        )
        return 1
    return result if isinstance(result, int) else 0


# The library's hints name its Python API; here the same advice names the commands.
_CLI_HINTS = (
    ("list projects with Store.list_projects() or `demiarch-store list`", "run `{p} list`"),
    ("store.quarantine_project() moves it aside", "`{p} quarantine ID` moves it aside"),
    ("point import_legacy() at", "point `{p} import-legacy` at"),
    ("use the ID that create_project() returned", "use an ID that `{p} list` shows"),
    ("import into another ID with project_id=...", "import it under another ID with `--id`"),
    ("not written by export_project() (`demiarch-store export`)", "not written by `{p} export`"),
    ("not written by export_project()", "not written by `{p} export`"),
    ("open it again with Store.open_project() or a new AsyncProjectStore", "run it again"),
    ("open it with open_project() or choose another ID", "`{p} show ID` opens it"),
    ("pass force=True (`--force`)", "add `--force`"),
    ("raise busy_deadline", "raise busy_deadline in config.toml"),
    ("close that AsyncProjectStore first", "close the program that has it open first"),
    ("close the other AsyncProjectStore (or Store) on it", "close the program that has it open"),
    ("create a new Store", "run the command again"),
)


def _for_the_command_line(exc: StoreError) -> str:
    """Return the error's text with each hint naming a command, not a Python call."""
    text = str(exc)
    if exc.hint:
        hint = exc.hint
        for library, command in _CLI_HINTS:
            hint = hint.replace(library, command.format(p=PROG))
        text = text.replace(exc.hint, hint)
    return text


# -- list, create, show, delete -----------------------------------------------------------------


async def _list_projects(config: StoreConfig) -> list[ProjectInfo]:
    async with Store(config) as store:
        return await store.list_projects()


def _info_json(info: ProjectInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "status": info.status,
        "updated_at": info.updated_at,
        "size_bytes": info.size_bytes,
        "revision": info.revision,
        "path": info.path,
        "error": info.error,
    }


@cli.command("list")
@json_option
@pass_state
def list_command(state: State, as_json: bool) -> None:
    """List the projects: ID, name, status, last update and size."""
    config = state.config()
    state.require_projects_dir()
    infos = state.run(_list_projects(config))
    if as_json:
        _emit_json([_info_json(i) for i in infos])
        return
    out = state.out
    if not infos:
        out.print(
            f"No projects in {config.projects_dir}. "
            f"Create one with: {state.cli_hint('create NAME')}",
            markup=False,
            soft_wrap=True,
        )
        _note_not_projects(state, config)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("Name")
    table.add_column("Status", no_wrap=True)
    table.add_column("Last update (UTC)", no_wrap=True)
    table.add_column("Size", justify="right", no_wrap=True)
    for info in infos:
        table.add_row(
            info.id,
            Text(info.name or "-"),
            Text(info.status, style=_STATUS_STYLE.get(info.status, "")),
            _when(info.updated_at, seconds=False),
            _size(info.size_bytes),
        )
    state.show(table)
    for info in infos:
        if info.status != "ok":
            todo = _STATUS_TODO.get(info.status, "").format(id=info.id)
            out.print(
                Text(f"{info.id}: {info.status}: {info.error}; {todo}", style="dim"),
                soft_wrap=True,
            )
    count = len(infos)
    where = _pg_where(config.database_url) if config.database_url else config.projects_dir
    out.print(
        f"{count} project{'s' if count != 1 else ''} in {where}",
        markup=False,
        style="dim",
        soft_wrap=True,
    )
    _note_not_projects(state, config)


def _pg_where(url: str) -> str:
    """Name a PostgreSQL database for people: its name, host and port (never a password)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port or 5432
    except ValueError:  # a malformed URL: connecting reports it
        return "the PostgreSQL database"
    if parts.scheme not in ("postgresql", "postgres"):  # a "key=value" conninfo string
        return "the PostgreSQL database"
    name = parts.path.lstrip("/") or parts.username or ""
    return f"the PostgreSQL database {name} on {parts.hostname or 'localhost'}:{port}"


def _note_not_projects(state: State, config: StoreConfig) -> None:
    """Say which folders were left out as not projects (a --projects-dir one level too high?)."""
    if config.database_url is not None:  # the projects are in the database, not in folders
        return
    others = not_projects(config.projects_dir)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        state.out.print(
            f"Left out {len(others)} folder{'s' if len(others) != 1 else ''} that "
            f"{'are' if len(others) != 1 else 'is'} not a project (no database, no marker): "
            f"{shown}",
            markup=False,
            style="dim",
            soft_wrap=True,
        )


async def _create(config: StoreConfig, name: str, description: str | None) -> dict[str, Any]:
    async with Store(config) as store:
        project = await store.create_project(name=name, description=description)
        if config.database_url is not None:  # in the database, not a file
            return {"id": project.id, "name": name, "path": _pg_where(config.database_url)}
        return {"id": project.id, "name": name, "path": project.path}


@cli.command("create")
@click.argument("name")
@click.option("--description", help="A longer description of the project.")
@json_option
@pass_state
def create_command(state: State, name: str, description: str | None, as_json: bool) -> None:
    """Create a project called NAME and print its ID."""
    config = state.config()
    new_dir = config.database_url is None and not config.projects_dir.exists()
    created = state.run(_create(config, name, description))
    if new_dir:  # on stderr: --json keeps stdout for the machine
        state.err.print(
            f"Created the projects directory {config.projects_dir} (it did not exist)",
            markup=False,
            soft_wrap=True,
        )
    if as_json:
        _emit_json(created)
        return
    state.out.print(
        f"Created project {created['id']} ({name!r}) at {created['path']}",
        markup=False,
        soft_wrap=True,
    )


def _count_rows(conn: sqlite3.Connection) -> dict[str, int]:
    """Count the rows of every table in one read transaction (a job on a reader thread)."""
    conn.execute("BEGIN")
    try:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' AND name != 'alembic_version' ORDER BY name"
            )
        ]
        counts = {}
        for name in names:
            quoted = '"' + name.replace('"', '""') + '"'
            counts[name] = int(conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0])
        return counts
    finally:
        conn.execute("ROLLBACK")


async def _pg_count_rows(project: AsyncProjectStore) -> dict[str, int]:
    """Count the rows of every table of a PostgreSQL project in one snapshot."""
    from .schema import metadata

    async with project.read() as r:
        return {
            name: int((await r.fetch(f'SELECT count(*) FROM "{name}"', {}))[0][0])
            for name in sorted(metadata.tables)
        }


async def _project_facts(project: AsyncProjectStore) -> dict[str, Any]:
    async with project.read() as r:
        records = await r.projects.list(limit=1)
        calls = await r.llm_calls.count()
        cost = await r.llm_calls.total_cost()
        threads = await r.lg_checkpoints.threads()
    on_file = project.path is not None  # None: a project in a PostgreSQL database
    if on_file:
        counts = await project._on_reader(_count_rows, action="counting rows")
    else:
        counts = await _pg_count_rows(project)
    record = records[0] if records else None
    return {
        "id": project.id,
        "name": record.name if record else None,
        "description": record.description if record else None,
        "created_at": record.created_at if record else None,
        "updated_at": record.updated_at if record else None,
        "path": project.path if on_file else _pg_where(project.config.database_url or ""),
        "engine": "sqlite" if on_file else "postgresql",
        "revision": project.revision,
        "head": HEAD_REVISION,
        "database_bytes": _file_size(project.path) if on_file else 0,
        "wal_bytes": _file_size(Path(f"{project.path}-wal")) if on_file else 0,
        "tables": counts,
        "llm_calls": calls,
        "cost_usd": cost,
        "langgraph_threads": [dataclasses.asdict(t) for t in threads],
    }


async def _show(state: State, project_id: str) -> dict[str, Any]:
    async with Store(state.config()) as store:
        _existing_dir(state, store, project_id)
        project = await store.open_project(project_id)
        return await _project_facts(project)


def _render_facts(state: State, facts: Mapping[str, Any]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Project", Text(f"{facts['id']}  {facts['name'] or '-'}"))
    if facts.get("description"):
        grid.add_row("Description", Text(facts["description"]))
    on_file = facts.get("engine", "sqlite") == "sqlite"
    grid.add_row("Path" if on_file else "Stored in", Text(str(facts["path"])))
    revision = facts["revision"]
    where = "head" if revision == facts["head"] else f"head is {facts['head']}"
    grid.add_row("Schema", Text(f"revision {revision} ({where})"))
    grid.add_row("Created", _when(facts["created_at"]))
    grid.add_row("Updated", _when(facts["updated_at"]))
    if on_file:
        grid.add_row(
            "Files", f"database {_size(facts['database_bytes'])}, WAL {_size(facts['wal_bytes'])}"
        )
    grid.add_row("LLM calls", f"{facts['llm_calls']:,}, costing {facts['cost_usd']} USD")
    state.show(grid)
    state.out.print()
    rows = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    rows.add_column("Table")
    rows.add_column("Rows", justify="right", no_wrap=True)
    for name, count in facts["tables"].items():
        rows.add_row(name, f"{count:,}")
    state.show(rows)
    if facts.get("langgraph_threads"):
        state.out.print()
        graph = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        graph.add_column("LangGraph thread")
        graph.add_column("Checkpoints", justify="right")
        graph.add_column("Size", justify="right")
        graph.add_column("Latest step", justify="right")
        for t in facts["langgraph_threads"]:
            step = "-" if t["latest_step"] is None else str(t["latest_step"])
            graph.add_row(
                Text(t["thread_id"]), f"{t['checkpoints']:,}", _size(t["size_bytes"]), step
            )
        state.show(graph)


@cli.command("show", short_help="Show a project: schema, sizes, LLM costs, rows per table.")
@project_id_argument
@json_option
@pass_state
def show_command(state: State, project_id: str, as_json: bool) -> None:
    """Show a project: schema revision, file and WAL size, LLM costs, rows per table, and its
    LangGraph threads (checkpoints, stored size, latest step)."""
    facts = state.run(_show(state, project_id))
    if as_json:
        _emit_json(facts)
        return
    _render_facts(state, facts)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def _confirm(question: str) -> None:
    """Ask before destroying data; anything but yes (or end of input) aborts.

    Always called outside ``asyncio.run``: its SIGINT handler would swallow a Ctrl-C typed at
    the prompt.
    """
    click.confirm(question, abort=True, err=True)


async def _delete(config: StoreConfig, project_id: str) -> None:
    async with Store(config) as store:
        await store.delete_project(project_id)


@cli.command("delete", short_help="Delete a project and all its files (asks first).")
@project_id_argument
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def delete_command(state: State, project_id: str, yes: bool) -> None:
    """Delete a project and all its files (asks first unless --yes).

    On PostgreSQL: its rows in every table; its backups on this host are kept.
    """
    store = Store(state.config())
    if store.config.database_url is not None:
        _delete_postgres(state, store.config, project_id, yes)
        return
    directory = _existing_dir(state, store, project_id)
    files = project_files(directory)
    refuse_foreign(files, project_id)  # before asking: nothing else may be in the folder
    if not yes:
        info = describe(project_id, store.database_path(project_id))
        name = f" ({info.name!r})" if info.name else ""
        what = ["its database"]
        if files.backups:
            what.append(_count(files.backups, "backup"))
        if files.quarantined:
            what.append(_count(files.quarantined, "quarantined copy", "quarantined copies"))
        _confirm(
            f"Delete project {project_id}{name}: {', '.join(what)} in {directory}? "
            "(The folder holds nothing else.)"
        )
    state.run(_delete(store.config, project_id))
    state.out.print(f"Deleted project {project_id}.", markup=False)


async def _pg_info(config: StoreConfig, project_id: str) -> ProjectInfo:
    """Describe a project of a PostgreSQL database from its row (without opening it)."""
    async with Store(config) as store:
        for info in await store.list_projects():
            if info.id == project_id:
                return info
    raise ProjectNotFound(
        "no such project in the database",
        project=project_id,
        hint=f"run `{PROG} list` to see the projects",
    )


def _delete_postgres(state: State, config: StoreConfig, project_id: str, yes: bool) -> None:
    info = state.run(_pg_info(config, project_id))
    backups = config.projects_dir / project_id / "backups"
    if not yes:
        name = f" ({info.name!r})" if info.name else ""
        _confirm(
            f"Delete project {project_id}{name} and all its records from "
            f"{_pg_where(config.database_url or '')}? (Its backups in {backups} are kept.)"
        )
    state.run(_delete(config, project_id))
    state.out.print(f"Deleted project {project_id}.", markup=False)


# -- schema revisions ---------------------------------------------------------------------------


def _describe_existing(state: State, project_id: str) -> ProjectInfo:
    """Describe a project read-only; raise for a missing, corrupt or unreadable one."""
    store = Store(state.config())
    if store.config.database_url is not None:
        return state.run(_pg_info(store.config, project_id))
    _existing_dir(state, store, project_id)
    info = describe(project_id, store.database_path(project_id))
    if info.status == "corrupt":
        raise CorruptDatabase(
            f"the file is not a healthy SQLite database ({info.error})",
            project=project_id,
            path=info.path,
            hint="restore it from a backup, or delete the project",
        )
    if info.status == "unreadable":
        raise StorageError(
            f"the database cannot be read ({info.error})",
            project=project_id,
            path=info.path,
            hint="check the permissions of the file and its directory",
        )
    return info


@cli.command("revision", short_help="Show a project's schema revision and the head revision.")
@project_id_argument
@json_option
@pass_state
def revision_command(state: State, project_id: str, as_json: bool) -> None:
    """Show a project's schema revision and the head revision, without changing anything."""
    info = _describe_existing(state, project_id)
    known = known_revisions()
    current = info.revision
    if current == HEAD_REVISION:
        verdict = "up to date"
    elif current is None:
        verdict = "no schema yet: it gets one when the project is next opened"
    elif current in known:
        verdict = f"behind: run `{state.cli_hint('migrate ' + project_id)}` to upgrade it"
    else:
        verdict = "newer than this demiarch-store: upgrade demiarch-store to open it"
    if as_json:
        _emit_json(
            {
                "id": project_id,
                "current": current,
                "head": HEAD_REVISION,
                "status": info.status,
                "up_to_date": current == HEAD_REVISION,
                "known": list(known),
            }
        )
        return
    state.out.print(
        f"Project {project_id}: schema revision {current or 'none'}, head {HEAD_REVISION} "
        f"({verdict})",
        markup=False,
        soft_wrap=True,
    )


# -- backups ------------------------------------------------------------------------------------


async def _backup(state: State, project_id: str, dest: Path | None) -> dict[str, Any]:
    async with Store(state.config()) as store:
        _existing_dir(state, store, project_id)
        project = await store.open_project(project_id)
        path = await project.backup(dest)
        return {"id": project_id, "backup": path, "size_bytes": _file_size(path)}


@cli.command("backup", short_help="Write a verified backup of a project while it stays usable.")
@project_id_argument
@click.option(
    "--to",
    "dest",
    type=click.Path(path_type=Path),
    help="A new file, or a directory to write into. Default: the project's backups/ "
    "directory, where only the newest keep_backups are kept.",
)
@json_option
@pass_state
def backup_command(state: State, project_id: str, dest: Path | None, as_json: bool) -> None:
    """Write a consistent, verified backup of a project (it stays usable meanwhile).

    On PostgreSQL the backup is a bundle (.demiarch.zip, the format of `export`).
    """
    with state.spinner(f"Backing up {project_id}"):
        result = state.run(_backup(state, project_id, dest))
    if as_json:
        _emit_json(result)
        return
    state.out.print(
        f"Backed up project {project_id} to {result['backup']} ({_size(result['size_bytes'])})",
        markup=False,
        soft_wrap=True,
    )


async def _restore(config: StoreConfig, project_id: str, backup: Path) -> dict[str, Any]:
    async with Store(config) as store:
        project = await store.restore_project(project_id, backup)
        return await _project_facts(project)


@cli.command("restore", short_help="Replace a project's database with a backup (asks first).")
@project_id_argument
@click.argument("backup", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_state
def restore_command(state: State, project_id: str, backup: Path, yes: bool, as_json: bool) -> None:
    """Replace a project's database with BACKUP (checked first; asks unless --yes).

    On PostgreSQL BACKUP is a bundle of this project; its rows replace the project's in one
    transaction.
    """
    config = state.config()
    _existing_dir(state, Store(config), project_id)
    if not yes:
        what = "the records" if config.database_url is not None else "the database"
        _confirm(
            f"Replace {what} of project {project_id} with {backup}? What it holds now "
            "is lost unless you back it up first"
        )
    facts = state.run(_restore(config, project_id, backup))
    if as_json:
        _emit_json(facts)
        return
    state.out.print(f"Restored project {project_id} from {backup}.", markup=False, soft_wrap=True)
    _render_facts(state, facts)


# -- health -------------------------------------------------------------------------------------


async def _check_one(store: Store, project_id: str, name: str | None, full: bool) -> dict[str, Any]:
    """Check one project; one that cannot even be opened is reported as a problem."""
    try:
        project = await store.open_project(project_id)
    except ProjectNotFound:
        raise
    except StoreError as exc:
        return {"id": project_id, "name": name, "ok": False, "problems": [str(exc)]}
    try:
        report = await project.check(full=full)
    finally:
        await project.close()  # checking every project must not keep them all open
    data = dataclasses.asdict(report)
    data.update(id=project_id, name=name, problems=list(report.problems))
    data["engine"] = "sqlite" if project.path is not None else "postgresql"
    return data


async def _check(state: State, project_id: str | None, full: bool) -> list[dict[str, Any]]:
    async with Store(state.config()) as store:
        if project_id is not None:
            _existing_dir(state, store, project_id)
            if store.config.database_url is not None:
                name = getattr(await store.open_project(project_id), "name", None)
            else:
                name = describe(project_id, store.database_path(project_id)).name
            return [await _check_one(store, project_id, name, full)]
        state.require_projects_dir()
        infos = await store.list_projects()
        results = []
        with state.progress("Checking", total=len(infos)) as bar:
            for info in infos:
                bar.update(bar.task_ids[0], item=info.id)
                if info.status == "ok":
                    results.append(await _check_one(store, info.id, info.name, full))
                else:
                    problem = f"{info.status}: {info.error}"
                    results.append(
                        {"id": info.id, "name": info.name, "ok": False, "problems": [problem]}
                    )
                bar.advance(bar.task_ids[0])
        return results


@cli.command("check", short_help="Check a project's health, or every project's (--all).")
@click.argument("project_id", metavar="[ID]", required=False, callback=_optional_project_id)
@click.option("--all", "all_", is_flag=True, help="Check every project (with a progress bar).")
@click.option("--full", is_flag=True, help="Run the slower integrity_check, not quick_check.")
@json_option
@pass_state
def check_command(
    state: State, project_id: str | None, all_: bool, full: bool, as_json: bool
) -> int:
    """Check a project's database (or --all): integrity, foreign keys, schema, WAL, modes.

    Exits 1 when a problem is found.
    """
    if (project_id is None) == (not all_):
        raise click.UsageError("give a project ID or --all (not both)")
    results = state.run(_check(state, project_id, full))
    if as_json:
        _emit_json(results if all_ else results[0])
    elif all_:
        _render_check_table(state, results)
    else:
        _render_check(state, results[0])
    return 0 if all(r["ok"] for r in results) else 1


def _render_check(state: State, result: Mapping[str, Any]) -> None:
    out = state.out
    verdict = Text("healthy", style="green") if result["ok"] else Text("PROBLEMS", style="bold red")
    out.print(Text(f"Project {result['id']}: ").append(verdict))
    for problem in result["problems"]:
        out.print(Text(f"  - {problem}"), soft_wrap=True)
    if "check" not in result:
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row(result["check"], Text(", ".join(result["integrity"])))
    grid.add_row("Foreign keys", f"{len(result['foreign_key_violations'])} violations")
    grid.add_row("Schema", f"revision {result['revision']} (head {result['head_revision']})")
    if result.get("engine") == "postgresql":  # no file, no pages: the server's storage
        state.show(grid)
        return
    grid.add_row(
        "Files",
        f"database {_size(result['database_bytes'])}, WAL {_size(result['wal_bytes'])}, "
        f"shared memory {_size(result['shm_bytes'])}",
    )
    grid.add_row(
        "Pages",
        f"{result['page_count']:,} of {_size(result['page_size'])}, "
        f"{result['freelist_pages']:,} free",
    )
    state.show(grid)


def _render_check_table(state: State, results: list[dict[str, Any]]) -> None:
    out = state.out
    if not results:
        out.print(f"No projects in {state.config().projects_dir}.", markup=False, soft_wrap=True)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("Name")
    table.add_column("Health", no_wrap=True)
    table.add_column("Problems")
    for r in results:
        health = Text("ok", style="green") if r["ok"] else Text("problems", style="bold red")
        table.add_row(r["id"], Text(r["name"] or "-"), health, Text("\n".join(r["problems"])))
    state.show(table)
    bad = sum(not r["ok"] for r in results)
    out.print(
        f"{len(results)} checked, {len(results) - bad} healthy, {bad} with problems",
        style="dim" if not bad else "red",
    )


async def _vacuum(state: State, project_id: str) -> dict[str, int]:
    async with Store(state.config()) as store:
        _existing_dir(state, store, project_id)
        project = await store.open_project(project_id)
        if project.path is None:  # PostgreSQL: raises NotSupported, saying autovacuum does it
            await project.vacuum()
        wal = Path(f"{project.path}-wal")
        before = _file_size(project.path) + _file_size(wal)
        await project.vacuum()
        after = _file_size(project.path) + _file_size(wal)
        return {"before_bytes": before, "after_bytes": after}


@cli.command("vacuum", short_help="Give a project's free pages back to the file system.")
@project_id_argument
@json_option
@pass_state
def vacuum_command(state: State, project_id: str, as_json: bool) -> None:
    """Rebuild a project's database to give free pages back to the file system.

    SQLite only: on PostgreSQL the server's autovacuum does this.
    """
    with state.spinner(f"Vacuuming {project_id}"):
        sizes = state.run(_vacuum(state, project_id))
    if as_json:
        _emit_json({"id": project_id, **sizes})
        return
    state.out.print(
        f"Vacuumed project {project_id}: {_size(sizes['before_bytes'])} -> "
        f"{_size(sizes['after_bytes'])} (database and WAL)",
        markup=False,
        soft_wrap=True,
    )


def _pages(conn: sqlite3.Connection) -> dict[str, int]:
    """Read the page figures (a job on a reader thread)."""
    return {
        name: int(conn.execute(f"PRAGMA {name}").fetchone()[0])
        for name in ("page_size", "page_count", "freelist_count")
    }


async def _stats(state: State, project_id: str) -> dict[str, Any]:
    async with Store(state.config()) as store:
        _existing_dir(state, store, project_id)
        project = await store.open_project(project_id)
        facts = await _project_facts(project)
        if project.path is None:  # PostgreSQL: no file, no pages
            return {
                "id": project_id,
                "name": facts["name"],
                "engine": "postgresql",
                "stored_in": facts["path"],
                "tables": facts["tables"],
                "pool": dataclasses.asdict(project.stats()),
            }
        pages = await project._on_reader(_pages, action="reading the page counts")
        return {
            "id": project_id,
            "name": facts["name"],
            "database_bytes": facts["database_bytes"],
            "wal_bytes": facts["wal_bytes"],
            "shm_bytes": _file_size(Path(f"{project.path}-shm")),
            "page_size": pages["page_size"],
            "page_count": pages["page_count"],
            "freelist_pages": pages["freelist_count"],
            "tables": facts["tables"],
            "pool": dataclasses.asdict(project.stats()),
        }


@cli.command("stats", short_help="Show a project's storage figures, rows and pool counters.")
@project_id_argument
@json_option
@pass_state
def stats_command(state: State, project_id: str, as_json: bool) -> None:
    """Show a project's storage figures, rows per table and connection-pool counters."""
    stats = state.run(_stats(state, project_id))
    if as_json:
        _emit_json(stats)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Project", Text(f"{stats['id']}  {stats['name'] or '-'}"))
    if "stored_in" in stats:
        grid.add_row("Stored in", Text(stats["stored_in"]))
    else:
        grid.add_row(
            "Files",
            f"database {_size(stats['database_bytes'])}, WAL {_size(stats['wal_bytes'])}, "
            f"shared memory {_size(stats['shm_bytes'])}",
        )
        free = stats["freelist_pages"] * stats["page_size"]
        grid.add_row(
            "Pages",
            f"{stats['page_count']:,} of {_size(stats['page_size'])}; "
            f"{stats['freelist_pages']:,} free ({_size(free)} that `vacuum` gives back)",
        )
    filled = [f"{t} {n:,}" for t, n in stats["tables"].items() if n]
    grid.add_row("Rows", Text(", ".join(filled) or "none"))
    pool = stats["pool"]
    grid.add_row(
        "Pool",
        f"{pool['connections']} connections; this run: {pool['commits']} commits, "
        f"{pool['rollbacks']} rollbacks, {pool['busy_retries']} busy retries",
    )
    state.show(grid)


# -- bundles and the legacy import --------------------------------------------------------------


async def _export(state: State, project_id: str, dest: str) -> dict[str, Any]:
    async with Store(state.config()) as store:
        _existing_dir(state, store, project_id)
        bundle = await store.export_project(project_id, dest)
        return {"id": project_id, "bundle": bundle, "size_bytes": _file_size(bundle)}


@cli.command("export", short_help="Write a project to one portable bundle file.")
@project_id_argument
@click.argument("dest", metavar="PATH", type=click.Path())  # a str: keeps a trailing "/"
@json_option
@pass_state
def export_command(state: State, project_id: str, dest: str, as_json: bool) -> None:
    """Write a project to one portable bundle file (PATH, or <ID>.demiarch.zip in PATH).

    PATH ending in "/" is a folder, created if missing.
    """
    with state.spinner(f"Exporting {project_id}"):
        result = state.run(_export(state, project_id, dest))
    if as_json:
        _emit_json(result)
        return
    state.out.print(
        f"Exported project {project_id} to {result['bundle']} ({_size(result['size_bytes'])})",
        markup=False,
        soft_wrap=True,
    )


async def _import(state: State, bundle: Path, project_id: str | None) -> dict[str, Any]:
    async with Store(state.config()) as store:
        try:
            project = await store.import_project(bundle, project_id=project_id)
        except ProjectExists as exc:
            raise ProjectExists(
                "a project with this ID already exists",
                project=exc.project,
                path=exc.path,
                hint=f"import it under another ID with `{state.cli_hint('import --id NEW_ID')} "
                f"{_quote(str(bundle))}`, or delete the existing project",
            ) from exc
        return await _project_facts(project)


@cli.command("import", short_help="Import a bundle made by `export` as a project.")
@click.argument("bundle", metavar="PATH", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--id",
    "project_id",
    callback=_optional_project_id,
    help="Import under this new ID instead of the bundle's (to keep both copies).",
)
@json_option
@pass_state
def import_command(state: State, bundle: Path, project_id: str | None, as_json: bool) -> None:
    """Import a bundle made by `export` as a project (verified before anything is written)."""
    with state.spinner(f"Importing {bundle}"):
        facts = state.run(_import(state, bundle, project_id))
    if as_json:
        _emit_json(facts)
        return
    state.out.print(f"Imported project {facts['id']} from {bundle}.", markup=False, soft_wrap=True)
    _render_facts(state, facts)


async def _import_legacy(config: StoreConfig, source: Path) -> LegacyImportReport:
    async with Store(config) as store:
        return await store.import_legacy(source)


@cli.command("import-legacy", short_help="Split an old global database into one project each.")
@click.argument("source", metavar="DB", type=click.Path(path_type=Path, dir_okay=False))
@json_option
@pass_state
def import_legacy_command(state: State, source: Path, as_json: bool) -> None:
    """Split an old global database (DB) into one project each; DB is only read."""
    with state.spinner(f"Importing projects from {source}"):
        report = state.run(_import_legacy(state.config(), source))
    if as_json:
        _emit_json(dataclasses.asdict(report))
        return
    out = state.out
    if report.imported:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        table.add_column("Imported", no_wrap=True)
        table.add_column("Rows")
        for project_id in report.imported:
            rows = report.rows.get(project_id, {})
            table.add_row(
                project_id,
                Text(", ".join(f"{t} {n:,}" for t, n in rows.items() if n) or "-"),
            )
        state.show(table)
    for project_id, why in report.skipped.items():
        out.print(Text(f"skipped {project_id}: {why}", style="yellow"), soft_wrap=True)
    for note in report.notes:
        out.print(Text(f"note: {note}", style="dim"), soft_wrap=True)
    out.print(
        f"{len(report.imported)} imported, {len(report.skipped)} skipped from {report.source}",
        markup=False,
        soft_wrap=True,
    )


async def _quarantine(config: StoreConfig, project_id: str, force: bool) -> Path:
    async with Store(config) as store:
        return await store.quarantine_project(project_id, force=force)


_MAIN_TABLES = {
    "conversations": "conversation",
    "messages": "message",
    "llm_calls": "LLM call",
    "agents": "agent",
    "checkpoints": "checkpoint",
    "sessions": "session",
}


def _holding(counts: Mapping[str, int] | None) -> str:
    """Say what a database holds, in the rows people count."""
    if counts is None:
        return "its contents cannot be read"
    shown = [_count(counts[t], one) for t, one in _MAIN_TABLES.items() if counts.get(t)]
    others = sum(n for t, n in counts.items() if t not in _MAIN_TABLES and t != "projects")
    if others:
        shown.append(_count(others, "other row"))
    return ", ".join(shown) or "no records"


def _backup_time(backup: Path) -> str:
    stamp = backup.stem.partition("-")[2]
    try:
        when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        when = datetime.fromtimestamp(backup.stat().st_mtime, UTC)
    return _when(when)


def _quarantine_question(project_id: str, path: Path, problem: str | None) -> str:
    """Ask, naming what would replace what: the backup (time, contents) and the live counts."""
    state_now = "healthy" if problem is None else f"damaged ({problem})"
    live = _holding(row_counts(path)) if path.exists() else "no database file"
    backup = good_backup(path, project_id)
    if backup is None:
        then = "It has no backup that passes the checks: the project is left without a database "
        then += "until you restore one."
    else:
        then = (
            f"The backup {backup.name} taken {_backup_time(backup)} "
            f"({_holding(row_counts(backup))}) is put in its place; what was written after it "
            "is only in the quarantined copy."
        )
    return (
        f"Project {project_id} is {state_now}. Its database now holds: {live}. It moves into "
        f"{path.parent / 'quarantine'}/. {then} Go ahead?"
    )


@cli.command(
    "quarantine", short_help="Move a damaged database aside; put its last good backup back."
)
@project_id_argument
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--force",
    is_flag=True,
    help="Quarantine a healthy project too (its data is replaced by an older backup).",
)
@json_option
@pass_state
def quarantine_command(
    state: State, project_id: str, yes: bool, force: bool, as_json: bool
) -> None:
    """Move a damaged project's database aside (kept) and restore its newest good backup.

    A healthy project is refused unless --force: to go back to a backup, use `restore`.
    SQLite only: a project on PostgreSQL has no file to move aside.
    """
    config = state.config()
    if config.database_url is not None:  # raises NotSupported, saying what to do instead
        state.run(_quarantine(config, project_id, force))
    store = Store(config)
    _existing_dir(state, store, project_id)
    path = store.database_path(project_id)
    problem = database_problem(path) if path.exists() else "its database file is missing"
    if problem is None and not force:
        raise ProjectHealthy(
            "the project's database is healthy: quarantine would replace it with an older backup",
            project=project_id,
            path=path,
            hint=f"to go back to a backup, run `{state.cli_hint(f'restore {project_id} BACKUP')}`"
            "; to quarantine it all the same, add `--force`",
        )
    if not yes:
        _confirm(_quarantine_question(project_id, path, problem))
    folder = state.run(_quarantine(config, project_id, force))
    info = describe(project_id, store.database_path(project_id))
    restored = info.status == "ok"
    if as_json:
        _emit_json(
            {"id": project_id, "quarantine": folder, "restored": restored, "status": info.status}
        )
        return
    out = state.out
    out.print(
        f"Moved the database of project {project_id} to {folder}.", markup=False, soft_wrap=True
    )
    if restored:
        out.print("Restored its newest good backup.", markup=False)
    else:
        restore = state.cli_hint(f"restore {project_id} BACKUP")
        out.print(
            f"It had no good backup: restore one (`{restore}`) or delete the project.",
            markup=False,
            soft_wrap=True,
        )


# -- migrations ---------------------------------------------------------------------------------


def _target_revision(ctx: click.Context, param: click.Parameter, value: str) -> str:
    known = known_revisions()
    if value not in ("head", "base", *known):
        raise click.BadParameter(
            f"{value!r} is not a schema revision: use head, base or one of {', '.join(known)}",
            ctx=ctx,
            param=param,
        )
    return value


def _is_downgrade(current: str | None, target: str) -> bool:
    known = known_revisions()
    if target == "head" or current is None or current not in known:
        return False
    return target == "base" or known.index(target) < known.index(current)


async def _migrate(
    state: State, infos: list[ProjectInfo], target: str, *, every: bool
) -> list[dict[str, Any]]:
    """Migrate each project; with ``every`` (``--all``) a failure is reported, not raised."""
    async with Store(state.config()) as store:
        results = []
        with state.progress("Migrating", total=len(infos)) as bar:
            for info in infos:
                bar.update(bar.task_ids[0], item=info.id)
                result: dict[str, Any] = {"id": info.id, "name": info.name}
                result.update(before=info.revision, after=info.revision)
                if every and info.status not in ("ok", "newer_schema"):
                    result.update(ok=False, error=f"{info.status}: {info.error}")
                    results.append(result)
                    bar.advance(bar.task_ids[0])
                    continue
                try:
                    before, after = await store.migrate_project(info.id, to=target)
                except StoreError as exc:
                    if not every:
                        raise
                    result.update(ok=False, error=str(exc))
                else:
                    result.update(before=before, after=after, ok=True, error=None)
                results.append(result)
                bar.advance(bar.task_ids[0])
        return results


@cli.command("migrate", short_help="Upgrade or downgrade a project's schema (or --all).")
@click.argument("project_id", metavar="[ID]", required=False, callback=_optional_project_id)
@click.option("--all", "all_", is_flag=True, help="Migrate every project (with a progress bar).")
@click.option(
    "--to",
    "target",
    default="head",
    show_default=True,
    callback=_target_revision,
    help="Target revision: head, base, or a revision such as 0001 (older = downgrade).",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask before a downgrade.")
@json_option
@pass_state
def migrate_command(
    state: State, project_id: str | None, all_: bool, target: str, yes: bool, as_json: bool
) -> int:
    """Upgrade or downgrade a project's schema (or --all), backing up data first."""
    if (project_id is None) == (not all_):
        raise click.UsageError("give a project ID or --all (not both)")
    if project_id is None:
        state.require_projects_dir()
        infos = state.run(_list_projects(state.config()))
    else:  # a damaged file gets the clear message discovery has, not Alembic's
        infos = [_describe_existing(state, project_id)]
    if state.config().database_url is not None and target not in ("head", HEAD_REVISION):
        # Refused by the store for every project alike: say it once, before any prompt.
        state.run(_migrate(state, infos[:1], target, every=False))
    downgrades = [i.id for i in infos if _is_downgrade(i.revision, target)]
    if downgrades and not yes:
        _confirm(
            f"Downgrade {', '.join(downgrades)} to {target}? Tables and columns added by later "
            "revisions are dropped with their data (a backup is written first)"
        )
    results = state.run(_migrate(state, infos, target, every=project_id is None))
    if as_json:
        _emit_json(results if all_ else results[0])
    elif not results:
        state.out.print(f"No projects in {state.config().projects_dir}.", markup=False)
    else:
        for r in results:
            if not r["ok"]:
                line = Text(f"{r['id']}: not migrated: {r['error']}", style="red")
            elif r["before"] == r["after"]:
                line = Text(f"{r['id']}: already at {r['after']}")
            else:
                line = Text(
                    f"{r['id']}: migrated from {r['before'] or 'none'} to {r['after'] or 'base'}"
                )
            state.out.print(line, soft_wrap=True)
    return 0 if all(r["ok"] for r in results) else 1


# -- costs --------------------------------------------------------------------------------------


def _parse_when(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """Parse YYYY-MM-DD, an ISO time (UTC unless it names a zone), or a span ago: 7d, 12h, 30m."""
    if value is None:
        return None
    text = value.strip()
    units = {"d": 86400, "h": 3600, "m": 60}
    if len(text) > 1 and text[-1] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a time: use YYYY-MM-DD, an ISO time, or 7d / 12h / 30m ago",
            ctx=ctx,
            param=param,
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


async def _costs(
    state: State, project_id: str, by: str, since: datetime | None, until: datetime | None
) -> dict[str, Any]:
    async with Store(state.config()) as store:
        _existing_dir(state, store, project_id)
        project = await store.open_project(project_id)
        async with project.read() as r:
            grouping = cast("Grouping", by)  # click.Choice has checked it
            totals = await r.llm_calls.totals(by=grouping, since=since, until=until)
            names = {a.id: a.name for a in await r.agents.list()} if by == "agent" else {}
    rows = [dataclasses.asdict(t) for t in totals]
    for row in rows:
        if by == "agent":
            row["agent"] = names.get(row["key"])
    return {
        "id": project_id,
        "by": by,
        "since": since,
        "until": until,
        "totals": rows,
        "calls": sum(t.calls for t in totals),
        "input_tokens": sum(t.input_tokens for t in totals),
        "output_tokens": sum(t.output_tokens for t in totals),
        # Summing Decimals keeps trailing zeros (0.002580); the store's own form has none.
        "cost_usd": from_nanos(sum(to_nanos(t.cost_usd) for t in totals)),
    }


@cli.command("costs", short_help="Sum a project's LLM calls and their exact cost.")
@project_id_argument
@click.option(
    "--by",
    type=click.Choice(["model", "agent", "conversation", "day"]),
    default="model",
    show_default=True,
    help="How to group the LLM calls.",
)
@click.option(
    "--since", callback=_parse_when, help="From: YYYY-MM-DD, ISO time (UTC), or 7d/12h ago."
)
@click.option("--until", callback=_parse_when, help="Until (excluded), same forms as --since.")
@json_option
@pass_state
def costs_command(
    state: State,
    project_id: str,
    by: str,
    since: datetime | None,
    until: datetime | None,
    as_json: bool,
) -> None:
    """Sum a project's LLM calls (calls, tokens, exact cost in USD) by model, agent or day."""
    report = state.run(_costs(state, project_id, by, since, until))
    if as_json:
        _emit_json(report)
        return
    out = state.out
    if not report["totals"]:
        span = "" if since is None and until is None else " in that period"
        out.print(f"Project {project_id} has no LLM calls{span}.", markup=False)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, show_footer=True)
    table.add_column(by.capitalize(), footer="total")
    if by == "agent":
        table.add_column("Agent ID", no_wrap=True, style="dim")
    table.add_column("Calls", justify="right", no_wrap=True, footer=f"{report['calls']:,}")
    table.add_column(
        "Tokens in", justify="right", no_wrap=True, footer=f"{report['input_tokens']:,}"
    )
    table.add_column(
        "Tokens out", justify="right", no_wrap=True, footer=f"{report['output_tokens']:,}"
    )
    table.add_column("Cost (USD)", justify="right", no_wrap=True, footer=str(report["cost_usd"]))
    for row in report["totals"]:
        figures = [
            f"{row['calls']:,}",
            f"{row['input_tokens']:,}",
            f"{row['output_tokens']:,}",
            str(row["cost_usd"]),
        ]
        if by == "agent":
            name = row["agent"] or ("(no agent)" if row["key"] is None else "(unknown)")
            table.add_row(Text(name), row["key"] or "-", *figures)
        else:
            key = row["key"] if row["key"] is not None else f"(no {by})"
            table.add_row(Text(key), *figures)
    state.show(table)


# -- demo ---------------------------------------------------------------------------------------

_DEMO_AGENTS = ("planner", "coder", "reviewer", "tester")
_DEMO_PRICE = (Decimal("0.15"), Decimal("0.60"))  # USD per million tokens in, out


async def _demo_agent(
    project: AsyncProjectStore, conversation_id: str, agent_id: str, name: str, turns: int
) -> None:
    """One agent's turns: each commits its message, LLM call and checkpoint together."""
    parent = None
    for turn in range(1, turns + 1):
        tokens_in, tokens_out = 300 + 40 * turn, 80 + 10 * turn
        cost = (tokens_in * _DEMO_PRICE[0] + tokens_out * _DEMO_PRICE[1]) / 1_000_000
        async with project.transaction() as tx:
            await tx.messages.append(
                conversation_id,
                role="assistant",
                content=f"{name}: step {turn} done",
                meta={"agent": name, "turn": turn},
            )
            await tx.llm_calls.record(
                model="demo-model",
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                cost_usd=cost,
                agent_id=agent_id,
                conversation_id=conversation_id,
            )
            state = json.dumps({"turn": turn}).encode()
            saved = await tx.checkpoints.save(agent_id, state, parent_id=parent)
        parent = saved.id
        await asyncio.sleep(0)  # let the other agents take their turn


async def _demo(config: StoreConfig, agents: int, turns: int) -> dict[str, Any]:
    names = [_DEMO_AGENTS[i % 4] + ("" if i < 4 else str(i // 4 + 1)) for i in range(agents)]
    async with Store(config) as store:
        project = await store.create_project(name="demo: agent runtime")
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="build a todo app")
            await tx.messages.append(conv.id, role="user", content="Build me a todo app.")
            registered = [await tx.agents.register(name, role="demo") for name in names]
        await asyncio.gather(
            *(_demo_agent(project, conv.id, a.id, a.name, turns) for a in registered)
        )
        return await _project_facts(project)


@cli.command("demo", short_help="Create a demo project that concurrent agents fill.")
@click.option("--agents", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option("--turns", default=5, show_default=True, type=click.IntRange(1, 1000))
@pass_state
def demo_command(state: State, agents: int, turns: int) -> None:
    """Create a demo project that concurrent agents fill (messages, LLM calls, checkpoints)."""
    facts = state.run(_demo(state.config(), agents, turns))
    _render_facts(state, facts)
    state.out.print(
        f"Delete it with: {state.cli_hint('delete --yes ' + facts['id'])}",
        markup=False,
        soft_wrap=True,
    )


# -- an example at the end of every --help -----------------------------------------------------

EXAMPLES: dict[str, tuple[str, ...]] = {
    "": ("list", "--projects-dir ./projects check --all"),
    "list": ("list", "list --json"),
    "create": ('create "research notes" --description "papers to read"',),
    "show": ("show todo-app", "show todo-app --json"),
    "delete": ("delete todo-app", "delete --yes todo-app"),
    "revision": ("revision todo-app",),
    "backup": ("backup todo-app", "backup todo-app --to friday.sqlite"),
    "restore": ("restore todo-app before-cleanup.sqlite",),
    "check": ("check todo-app --full", "check --all"),
    "vacuum": ("vacuum todo-app",),
    "stats": ("stats todo-app",),
    "export": ("export todo-app friday.demiarch.zip",),
    "import": ("import todo-app.demiarch.zip --id todo-copy",),
    "import-legacy": ("import-legacy ralph.db",),
    "quarantine": ("quarantine todo-app", "quarantine --force --yes todo-app"),
    "migrate": ("migrate todo-app", "migrate todo-app --to 0001 --yes", "migrate --all"),
    "costs": ("costs todo-app --by agent", "costs todo-app --by day --since 7d --json"),
    "demo": ("demo --agents 4 --turns 5",),
}
"""Command name ("" for the group) -> examples of its use, each the arguments after the program."""


def _add_examples() -> None:
    """End each command's ``--help`` with its examples, one a line (Click rewraps the rest)."""
    for name, examples in EXAMPLES.items():
        command = cli if not name else cli.commands[name]
        lines = "\n".join(f"  $ {PROG} {example}" for example in examples)  # "\b": keep lines
        command.epilog = f"{'Examples' if len(examples) > 1 else 'Example'}:\n\n\b\n{lines}"


_add_examples()


if __name__ == "__main__":  # pragma: no cover - `python -m demiarch_store` uses __main__.py
    sys.exit(main())
