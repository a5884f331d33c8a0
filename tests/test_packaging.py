"""The package as it ships: ``python -m build`` makes an sdist and a wheel that ``twine check``
accepts, the wheel carries the migrations, the license and exactly the dependencies the code
imports, and installed into a fresh virtual environment it runs the command line and an example.
"""

from __future__ import annotations

import ast
import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

import demiarch_store
from demiarch_store.schema import HEAD_REVISION

ROOT = Path(__file__).resolve().parent.parent
# Installing into a fresh environment fetches SQLAlchemy, Alembic, Click and Rich.
INSTALL_TIMEOUT = 600


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the sdist, and the wheel from it, as a release would; return the dist folder."""
    tmp = tmp_path_factory.mktemp("dist")
    # Built from a copy: setuptools writes build/ and *.egg-info into the source tree, and two
    # runs of the suite in one checkout would collide there.
    source = tmp / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "dist",
            "site",
            "*.egg-info",
            "__pycache__",
            ".hypothesis",
            "results",
        ),
    )
    out = tmp / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    # setuptools warns about what it would otherwise silently get wrong (a license table, ...).
    assert "Warning" not in build.stderr and "deprecated" not in build.stderr.lower(), build.stderr
    return out


def _wheel(dist: Path) -> Path:
    [wheel] = dist.glob("demiarch_store-*.whl")
    return wheel


def _metadata(dist: Path) -> email.message.Message:
    wheel = zipfile.ZipFile(_wheel(dist))
    [name] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.parser.Parser().parsestr(wheel.read(name).decode())


def test_build_makes_an_sdist_and_a_wheel_that_twine_accepts(dist: Path) -> None:
    version = demiarch_store.__version__
    assert sorted(p.name for p in dist.iterdir()) == [
        f"demiarch_store-{version}-py3-none-any.whl",
        f"demiarch_store-{version}.tar.gz",
    ]
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("PASSED") == 2, check.stdout
    with tarfile.open(dist / f"demiarch_store-{version}.tar.gz") as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    for shipped in ("LICENSE", "README.md", "pyproject.toml", "migrations/env.py"):
        assert shipped in names, shipped


def test_the_wheel_ships_migrations_license_and_metadata(dist: Path) -> None:
    names = zipfile.ZipFile(_wheel(dist)).namelist()
    for module in sorted((ROOT / "migrations" / "versions").glob("0*.py")):
        assert f"demiarch_store/migrations/versions/{module.name}" in names
    assert "demiarch_store/migrations/env.py" in names
    # Every subpackage ships in the wheel (the integrations' frameworks and psycopg are extras).
    for module in sorted((ROOT / "demiarch_store").rglob("*.py")):
        assert module.relative_to(ROOT).as_posix() in names, module
    assert "demiarch_store/py.typed" in names
    version = demiarch_store.__version__
    assert f"demiarch_store-{version}.dist-info/licenses/LICENSE" in names
    meta = _metadata(dist)
    assert meta["Version"] == version
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.11"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Repository", "Changelog"} <= set(urls)


def _third_party_imports(paths: list[Path]) -> set[str]:
    """Top-level names of the modules these files import, standard library and own aside."""
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"demiarch_store", "__future__"}


def test_runtime_dependencies_are_exactly_what_the_package_imports(dist: Path) -> None:
    requires = _metadata(dist).get_all("Requires-Dist") or []
    runtime = {
        _normalise(re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0])
        for r in requires
        if "extra ==" not in r
    }
    package = sorted((ROOT / "demiarch_store").rglob("*.py"))
    # Framework integrations import their framework, and the PostgreSQL engine psycopg: each is
    # an optional extra.
    extras = {"integrations", "postgres"}
    core = [p for p in package if not extras & set(p.relative_to(ROOT).parts)]
    core += sorted((ROOT / "migrations").rglob("*.py"))
    owners = packages_distributions()
    imported = {_normalise(owners[m][0]) for m in _third_party_imports(core)}
    assert imported == runtime, f"imported {sorted(imported)}, declared {sorted(runtime)}"
    assert not {"aiosqlite", "anyio"} & runtime


def test_the_wheel_installs_into_a_fresh_environment_and_runs(dist: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    install = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(_wheel(dist))],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    home = tmp_path / "home"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))},
        "DEMIARCH_HOME": str(home),
        "COLUMNS": "100",
    }

    def run(*argv: str | Path) -> str:
        done = subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=tmp_path,
        )
        assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
        return done.stdout

    # The library comes from the environment, and imports neither benchmark nor test tools.
    where = run(
        bin_dir / "python",
        "-c",
        "import sys, demiarch_store; print(demiarch_store.__file__); "
        "print(sorted({'aiosqlite', 'anyio'} & set(sys.modules)))",
    ).splitlines()
    assert where[0].startswith(str(env_dir)) and where[1] == "[]", where

    cli = bin_dir / "demiarch-store"
    assert run(cli, "--version").strip() == f"demiarch-store, version {demiarch_store.__version__}"
    created = run(cli, "create", "from the wheel")
    assert created.startswith("Created project ") and str(home / "projects") in created
    project_id = created.split()[2]
    assert f"revision {HEAD_REVISION}" in run(cli, "revision", project_id)
    assert "healthy" in run(cli, "check", project_id)
    assert (
        run(cli, "backup", "--help")
        .rstrip()
        .endswith("$ demiarch-store backup todo-app --to friday.sqlite")
    )

    printed = run(bin_dir / "python", ROOT / "examples" / "quickstart.py").splitlines()
    assert printed[1] == "101 user hello ['tool', 'tool']"
    assert re.fullmatch(r"\w{16} my app ok \d+", printed[3]), printed  # sizes: test_quickstart


def test_no_module_imports_one_that_imports_it_back() -> None:
    """The package's import graph has no cycle: read from the source (every import, also
    those inside functions; not those under ``if TYPE_CHECKING:``, which never run)."""
    import ast

    root = Path(__file__).resolve().parent.parent
    package = root / "demiarch_store"

    def name_of(path: Path) -> str:
        parts = list(path.relative_to(root).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(p): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)
        }
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                subs = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
                # `from . import x` loads x; `from .m import y` loads m (and its packages).
                deps |= subs or ({base} & modules.keys())
            elif isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names} & modules.keys()
        graph[name] = deps - {name}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo += graph[current]
        return False

    loops = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a))
    assert loops == []
    assert graph["demiarch_store.errors"].isdisjoint({"demiarch_store.schema"})


def test_every_error_is_in_the_readme_tree_and_the_errors_page() -> None:
    """The README's tree of errors and docs/errors.md name every StoreError the package exports,
    under its right parent."""
    import re

    import demiarch_store
    from demiarch_store import StoreError

    root = Path(__file__).resolve().parent.parent
    errors = {
        name: cls
        for name in demiarch_store.__all__
        if isinstance(cls := getattr(demiarch_store, name), type) and issubclass(cls, StoreError)
    }
    for page in ("README.md", "docs/errors.md"):
        text = (root / page).read_text()
        tree = text[text.index("StoreError\n├") :]
        tree = tree[: tree.index("```")]
        depth: dict[str, int] = {}
        parents: list[str] = ["StoreError"]
        for line in tree.splitlines()[1:]:
            found = re.match(r"^([│ ]*)[├└]── (\w+)", line)
            assert found, line
            level = len(found[1]) // 4
            name = found[2]
            depth[name] = level
            parents[level + 1 :] = [name]
            assert errors[name].__bases__[0].__name__ == parents[level], (page, name)
        assert set(depth) == set(errors) - {"StoreError"}, page
