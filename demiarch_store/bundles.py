"""Project bundles: one portable file holding a project's database and a manifest.

A bundle is a zip archive with exactly two members::

    manifest.json      {"format": "demiarch-store bundle", "format_version": 1,
                        "project_id", "name", "revision", "sha256", "size_bytes", "created_at",
                        "exported_by"}
    database.sqlite    a consistent snapshot written by ``backup.write_snapshot``

Reading a bundle never trusts it: every member name, the manifest's fields, the database's
size and SHA-256, its integrity check and its project record are verified on a staging copy
before anything enters the projects directory. The checksum detects damage, not a forger who
rewrites the manifest too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import tempfile
import zipfile
import zlib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from .backup import Staging, file_problem, fsync_dir, make_private_dir, require_space
from .errors import BundleError, ProjectExists, SchemaTooNew, StoreError
from .health import foreign_object, harden, schema_problem
from .ids import DATABASE_NAME, validate_project_id
from .migrate import HEAD_REVISION, known_revisions, read_revision
from .project import claim_project_dir

__all__ = [
    "BUNDLE_SUFFIX",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Manifest",
    "install_bundle",
    "publish",
    "read_bundle",
    "write_bundle",
]

FORMAT = "demiarch-store bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
BUNDLE_SUFFIX = ".demiarch.zip"
_MAX_MANIFEST = 64 * 1024
# What reading a damaged member raises: a bad CRC, a broken deflate stream, a cut-off member,
# a compression method zipfile cannot read.
_UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError)
_CHUNK = 1024 * 1024
# Deflate cannot shrink data by more than about 1032:1: a member claiming more lies about its size.
_MAX_DEFLATE_RATIO = 1032
_LOCAL_HEADER = 30


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a bundle says about the project it holds."""

    project_id: str
    name: str
    revision: str
    sha256: str
    size_bytes: int
    created_at: str
    format_version: int = FORMAT_VERSION
    exported_by: str = ""

    def to_json(self) -> bytes:
        data = {"format": FORMAT, **asdict(self)}
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def export_target(dest: Path | str, project_id: str) -> Path:
    """Return the bundle path for ``dest``: a directory gets ``<id>.demiarch.zip`` inside.

    A path written with a trailing slash names a directory even if it does not exist yet: it
    is created (0700), never taken for the bundle's own file name.
    """
    folder = isinstance(dest, str) and dest.endswith(("/", os.sep))
    path = Path(dest).expanduser()
    if folder and not path.is_dir():
        make_private_dir(path)
    return path / f"{project_id}{BUNDLE_SUFFIX}" if folder or path.is_dir() else path


def write_bundle(snapshot: Path, dest: Path, *, project_id: str, version: str) -> Path:
    """Zip ``snapshot`` and its manifest into a new file ``dest`` (0600, fsynced, never replaced).

    Runs in a thread. The archive is written to a temporary file beside ``snapshot`` (in the
    export's staging folder, on ``dest``'s file system, so a crash leaves nothing but that
    folder) and linked into place only when complete, so ``dest`` is never a partial bundle.
    """
    conn = sqlite3.connect(snapshot, isolation_level=None)
    try:
        revision = read_revision(conn)
        row = conn.execute("SELECT name FROM projects WHERE id = ?", (project_id,)).fetchone()
    finally:
        conn.close()
    if revision is None or row is None:
        raise BundleError(
            "the project has no schema or no project record to export",
            project=project_id,
            hint="check it with `demiarch-store check`",
        )
    manifest = Manifest(
        project_id=project_id,
        name=row[0],
        revision=revision,
        sha256=_sha256(snapshot),
        size_bytes=snapshot.stat().st_size,
        created_at=datetime.now(UTC).isoformat(),
        exported_by=f"demiarch-store {version}",
    )
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=snapshot.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(MANIFEST_NAME, manifest.to_json())
                zf.write(snapshot, DATABASE_NAME)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, dest)
        except FileExistsError:
            raise BundleError(
                "the bundle file already exists",
                project=project_id,
                path=dest,
                hint="choose another path or remove the old bundle",
            ) from None
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _bad(message: str, bundle: Path, hint: str | None = None) -> BundleError:
    return BundleError(
        message,
        path=bundle,
        hint=hint or "the bundle is damaged or was altered; export the project again",
    )


def _check_members(zf: zipfile.ZipFile, bundle: Path) -> None:
    infos = zf.infolist()
    names = [i.filename for i in infos]
    expected = {MANIFEST_NAME, DATABASE_NAME}
    if len(names) != len(set(names)) or set(names) != expected:
        extra = sorted(set(names) - expected)[:3]
        what = f"unexpected members {extra!r}" if extra else f"members {sorted(names)!r}"
        raise _bad(
            f"the bundle holds {what}; a bundle holds exactly {sorted(expected)!r}",
            bundle,
            hint="this file was not written by export_project(), or it was altered; "
            "it was not extracted",
        )
    for info in infos:
        mode = info.external_attr >> 16
        if info.is_dir() or stat.S_ISLNK(mode) or info.flag_bits & 0x1:
            raise _bad(f"the bundle member {info.filename!r} is not a plain file", bundle)
    _check_sizes(infos, bundle)


def _check_sizes(infos: list[zipfile.ZipInfo], bundle: Path) -> None:
    """Refuse sizes that cannot be true, before a byte is extracted.

    A stored member is as long as its compressed data, a deflated one at most about 1032
    times longer; each member's data lies inside the archive, and no two overlap (the trick
    of zip bombs that reuse one compressed stream).
    """
    archive = bundle.stat().st_size
    spans = []
    for info in infos:
        if info.compress_type == zipfile.ZIP_STORED:
            honest = info.file_size == info.compress_size
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            honest = info.file_size <= max(info.compress_size, 1) * _MAX_DEFLATE_RATIO
        else:
            raise _bad(
                f"the bundle member {info.filename!r} uses a compression method export never uses",
                bundle,
            )
        if not honest:
            raise _bad(
                f"the bundle member {info.filename!r} declares {info.file_size:,} bytes, which "
                f"its {info.compress_size:,} compressed bytes cannot hold; it was not extracted",
                bundle,
                hint="the bundle was altered (a zip bomb, or a lying size); export it again",
            )
        start = info.header_offset
        end = start + _LOCAL_HEADER + len(info.filename.encode()) + info.compress_size
        if end > archive:
            raise _bad(
                f"the bundle member {info.filename!r} claims more data than the file holds",
                bundle,
            )
        spans.append((start, end))
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise _bad("the bundle's members overlap; it was not extracted", bundle)


def _read_manifest(zf: zipfile.ZipFile, bundle: Path) -> Manifest:
    info = zf.getinfo(MANIFEST_NAME)
    if info.file_size > _MAX_MANIFEST:
        raise _bad("the bundle's manifest is too large", bundle)
    try:
        data = json.loads(zf.read(MANIFEST_NAME))
    except _UNREADABLE as exc:
        raise _bad(f"the bundle's manifest is unreadable ({exc})", bundle) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _bad("the file is not a demiarch-store bundle (no bundle manifest)", bundle)
    version = data.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise _bad("the bundle's manifest has no valid format_version", bundle)
    if version > FORMAT_VERSION:
        raise _bad(
            f"the bundle uses format version {version}, newer than this code reads "
            f"({FORMAT_VERSION})",
            bundle,
            hint="upgrade demiarch-store to import it",
        )
    fields: dict[str, type] = {
        "project_id": str,
        "name": str,
        "revision": str,
        "sha256": str,
        "size_bytes": int,
        "created_at": str,
    }
    for key, kind in fields.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise _bad(f"the bundle's manifest has no valid {key!r}", bundle)
    try:
        validate_project_id(data["project_id"])
    except StoreError:
        raise _bad("the bundle's manifest holds an invalid project ID", bundle) from None
    digest = data["sha256"]
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise _bad("the bundle's manifest has no valid 'sha256'", bundle)
    if data["size_bytes"] != zf.getinfo(DATABASE_NAME).file_size:
        raise _bad("the bundle's database does not have the size its manifest says", bundle)
    exported_by = data.get("exported_by")
    return Manifest(
        project_id=data["project_id"],
        name=data["name"],
        revision=data["revision"],
        sha256=digest,
        size_bytes=data["size_bytes"],
        created_at=data["created_at"],
        format_version=version,
        exported_by=exported_by if isinstance(exported_by, str) else "",
    )


def _extract(zf: zipfile.ZipFile, manifest: Manifest, dest: Path, bundle: Path) -> None:
    """Copy the database member into a new file ``dest``, checking its size and SHA-256."""
    digest = hashlib.sha256()
    written = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(dest, flags, 0o600)
    with os.fdopen(fd, "wb") as out, zf.open(DATABASE_NAME) as src:
        os.fchmod(out.fileno(), 0o600)
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > manifest.size_bytes:
                raise _bad("the bundle's database is larger than its manifest says", bundle)
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if written != manifest.size_bytes or digest.hexdigest() != manifest.sha256:
        raise _bad("the bundle's database does not match its checksum", bundle)


_FORGED = (
    "this file was not written by export_project() (`demiarch-store export`), or it was "
    "altered since; nothing was imported"
)


def _verify_database(path: Path, manifest: Manifest, bundle: Path, project_id: str) -> None:
    """Check the staged database and give it its new ID; it is ours alone, nothing else has it.

    Its schema is checked first, against what this code's revision makes: until then nothing
    in the file may run (``integrity_check`` evaluates its indexes' expressions).
    """
    # Read-only until the schema is known to be ours (SQLite's defensive mode needs Python
    # 3.12's setconfig; read-only holds on every version).
    conn = sqlite3.connect(f"file:{quote(str(path.absolute()))}?mode=ro", uri=True)
    conn.isolation_level = None
    try:
        harden(conn)
        foreign = foreign_object(conn)
        if foreign is not None:
            raise _bad(
                f"the bundle's database holds {foreign}, which demiarch-store never makes",
                bundle,
                hint=_FORGED,
            )
        revision = read_revision(conn)
        if revision != manifest.revision:
            raise _bad("the bundle's database is not at the revision its manifest says", bundle)
        if revision != HEAD_REVISION and revision not in known_revisions():
            raise SchemaTooNew(
                f"the bundle holds schema revision {revision!r}, newer than this "
                f"demiarch-store knows (head {HEAD_REVISION!r})",
                project=manifest.project_id,
                path=bundle,
                hint="upgrade demiarch-store to import it; nothing was written",
            )
        unlike = schema_problem(conn, revision)
        if unlike is not None:
            raise _bad(f"the bundle's database {unlike}", bundle, hint=_FORGED)
        problem = file_problem(conn)
        if problem is not None:
            raise _bad(f"the bundle's database {problem}", bundle)
        rows = conn.execute("SELECT id FROM projects").fetchall()
        if rows != [(manifest.project_id,)]:
            raise _bad("the bundle's database does not hold the project its manifest names", bundle)
        if project_id != manifest.project_id:
            conn.close()
            conn = sqlite3.connect(path, isolation_level=None)
            harden(conn)
            conn.execute("UPDATE projects SET id = ? WHERE id = ?", (project_id, rows[0][0]))
    except sqlite3.Error as exc:
        raise _bad(f"the bundle's database is damaged ({exc})", bundle) from exc
    finally:
        conn.close()


_TAKEN = "import into another ID with project_id=..., or delete the existing project"


def _refuse_taken(projects_dir: Path, project_id: str) -> None:
    """Fail early, before anything is staged; ``publish`` decides for good."""
    if os.path.lexists(projects_dir / project_id):
        raise ProjectExists(
            "a project with this ID already exists",
            project=project_id,
            path=projects_dir / project_id,
            hint=_TAKEN,
        )


def read_bundle(
    bundle: Path, projects_dir: Path, project_id: str | None
) -> tuple[Staging, Manifest]:
    """Verify ``bundle`` and stage its database under ``projects_dir``; return (staging, ...).

    Runs in a thread. The staging folder's name starts with a dot, so discovery never lists
    it; the caller publishes its ``database.sqlite`` with ``publish``, then closes it.
    """
    bundle = bundle.expanduser()
    target = project_id
    if target is not None:
        _refuse_taken(projects_dir, target)
    try:
        zf = zipfile.ZipFile(bundle)
    except FileNotFoundError:
        raise BundleError("no such bundle file", path=bundle, hint="check the path") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise _bad(
            f"the file is not a readable bundle ({exc})",
            bundle,
            hint="the file is truncated or not a bundle; copy or export it again",
        ) from exc
    with zf:
        _check_members(zf, bundle)
        manifest = _read_manifest(zf, bundle)
        target = target or manifest.project_id
        _refuse_taken(projects_dir, target)
        require_space(
            projects_dir,
            manifest.size_bytes,
            what="the bundle's database",
            project=target,
            source=bundle,
        )
        make_private_dir(projects_dir)
        staging = Staging(projects_dir, ".import-")
        staged = staging.path / DATABASE_NAME
        try:
            try:
                _extract(zf, manifest, staged, bundle)
            except _UNREADABLE as exc:
                raise _bad(f"the bundle's database cannot be read ({exc})", bundle) from exc
            _verify_database(staged, manifest, bundle, target)
        except BaseException:
            staging.close()
            raise
    return staging, manifest


def publish(database: Path, projects_dir: Path, project_id: str) -> Path:
    """Move a staged database file into ``<projects_dir>/<project_id>/``; return that folder.

    ``mkdir`` decides who gets the ID: a project created meanwhile wins and ``ProjectExists``
    is raised. The caller removes its staging folder.
    """
    directory = projects_dir / validate_project_id(project_id)
    claim_project_dir(directory, project_id, hint=_TAKEN)
    try:
        os.rename(database, directory / DATABASE_NAME)
        fsync_dir(directory)
        fsync_dir(projects_dir)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return directory


def install_bundle(bundle: Path, projects_dir: Path, project_id: str | None) -> Path:
    """Verify ``bundle``, then move its database into its project directory; return that."""
    staging, manifest = read_bundle(bundle, projects_dir, project_id)
    with staging:
        target = project_id or manifest.project_id
        return publish(staging.path / DATABASE_NAME, projects_dir, target)
