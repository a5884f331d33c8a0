"""Backups: consistent online snapshots written with SQLite's backup API, files 0600.

Also the file work of restoring a backup and of quarantining a damaged database: everything
that creates, renames or removes database files outside SQLite.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from .errors import BackupError, DatabaseBusy, StorageError
from .health import foreign_object, harden, schema_problem
from .ids import DATABASE_NAME, MARKER_NAME, new_record_id
from .revisions import known_revisions, read_revision
from .sqlite.wal_index import open_in_this_process

__all__ = [
    "BACKUPS_DIR",
    "QUARANTINE_DIR",
    "STALE_STAGING_AGE",
    "Staging",
    "backups_dir_for",
    "create_database_file",
    "fsync_dir",
    "list_backups",
    "make_private_dir",
    "quarantine_database",
    "remove_file",
    "remove_stale_staging",
    "replace_database",
    "require_space",
    "restore_staging",
    "stage_restore",
    "take_backup",
    "write_marker",
    "write_snapshot",
]

log = logging.getLogger("demiarch_store")


def write_snapshot(source: sqlite3.Connection, dest: Path) -> None:
    """Copy ``source`` into a new file ``dest`` (mode 0600), verify it, and fsync it.

    Runs on a connection thread. Uses SQLite's online backup API in one step, so the copy is
    one consistent snapshot that includes what sits in the ``-wal`` file. The file is created
    with ``O_EXCL|O_NOFOLLOW``: an existing file or a planted link is never overwritten. On any
    failure the partial file is removed and the error re-raised.
    """
    create_database_file(dest)
    try:
        target = sqlite3.connect(dest, isolation_level=None)
        try:
            source.backup(target)
            # The copy inherits the source's WAL mode; a backup is one self-contained file.
            target.execute("PRAGMA journal_mode = DELETE")
            result = target.execute("PRAGMA integrity_check").fetchall()
            if result != [("ok",)]:
                raise sqlite3.DatabaseError(
                    f"the backup failed its integrity check: {result[0][0]}"
                )
        finally:
            target.close()
        fd = os.open(dest, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        remove_file(dest)
        raise


def create_database_file(path: Path) -> None:
    """Create an empty database file with mode 0600 before SQLite opens it.

    ``O_EXCL|O_NOFOLLOW`` refuses an existing file or a planted symlink; SQLite later gives the
    ``-wal`` and ``-shm`` files the database's mode.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700, whatever the umask."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)


SPACE_MARGIN = 1024 * 1024
"""Room kept free beyond a file about to be written (SQLite's journal, the file system's own)."""


def require_space(
    directory: Path, needed: int, *, what: str, project: str | None, source: Path
) -> None:
    """Raise ``StorageError`` unless ``directory``'s file system has room for ``needed`` bytes.

    Called before a file from elsewhere is written out, so a disk cannot fill half-way.
    """
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the folder is made later: ask its nearest existing parent
    free = shutil.disk_usage(probe).free
    if needed + SPACE_MARGIN > free:
        raise StorageError(
            f"{what} needs {needed:,} bytes but only {free:,} are free where it would be "
            f"written ({str(directory)!r}); nothing was written",
            project=project,
            path=source,
            hint="free some space (or choose another projects directory) and retry",
        )


def write_marker(directory: Path, project_id: str) -> None:
    """Write the project marker (``.demiarch-project``, 0600) in a project folder, if missing."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(directory / MARKER_NAME, flags, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, f"demiarch-store project {project_id}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_file(path: Path) -> None:
    """Remove a database file and its side files if they exist."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


# -- taking backups --------------------------------------------------------------------------

BACKUPS_DIR = "backups"
# <sequence>-<UTC time>.sqlite: the sequence orders backups even if the clock jumps back; the
# time is for people. A file is only given such a name once it is complete and verified.
_BACKUP_NAME = re.compile(r"(\d{6,})-(\d{8}T\d{6}Z)\.sqlite")
_PARTIAL_NAME = re.compile(r"\.partial-(\d+)-[0-9a-z]+\.sqlite(?:-journal|-wal|-shm)?")


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def link_numbered(source: Path, existing: list[Path], directory: Path, suffix: str) -> Path:
    """Hard-link ``source`` into ``directory`` as the next backup, ``<seq>-<UTC time><suffix>``.

    ``existing`` is the folder's backups, newest first. Two processes that pick the same number
    race for the link: the loser takes the next one.
    """
    stamp = _utc_stamp()
    newest = _SEQUENCE.match(existing[0].name) if existing else None
    seq = int(newest[1]) + 1 if newest is not None else 1
    while True:
        final = directory / f"{seq:06d}-{stamp}{suffix}"
        try:
            os.link(source, final)
        except FileExistsError:
            seq += 1  # another process took this number first
            continue
        return final


_SEQUENCE = re.compile(r"(\d+)-")


def backups_dir_for(database: Path) -> Path:
    """Return where a database's backups go: ``<project dir>/backups``.

    A database used alone under another name (``agent.sqlite``) gets ``agent.sqlite.backups``
    beside it, so files sharing a folder keep separate backups.
    """
    if database.name == DATABASE_NAME:
        return database.parent / BACKUPS_DIR
    return database.parent / f"{database.name}.{BACKUPS_DIR}"


def list_backups(directory: Path) -> list[Path]:
    """Return the finished backups in ``directory``, newest first (partial files are ignored)."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        m = _BACKUP_NAME.fullmatch(name)
        if m is not None:
            found.append((int(m[1]), name))
    return [directory / name for _, name in sorted(found, reverse=True)]


def take_backup(
    source: sqlite3.Connection, directory: Path, dest: Path | None, keep: int | None
) -> Path:
    """Snapshot ``source`` into ``directory`` (or onto ``dest``); prune to ``keep`` backups.

    Runs on a reader connection's thread, so writers keep writing. The snapshot is written to a
    hidden partial file and only linked to its final name once ``write_snapshot`` verified and
    fsynced it; a process killed half-way leaves a partial file that the next backup removes,
    never a file that looks like a backup.
    """
    _remove_stale_partials(directory)
    partial = directory / f".partial-{os.getpid()}-{new_record_id()}.sqlite"
    write_snapshot(source, partial)
    try:
        if dest is not None:
            os.link(partial, dest)  # refuses an existing file, like O_EXCL
            final = dest
        else:
            final = link_numbered(partial, list_backups(directory), directory, ".sqlite")
    finally:
        os.unlink(partial)
    fsync_dir(directory)
    if keep is not None:
        for old in list_backups(directory)[keep:]:
            old.unlink(missing_ok=True)  # another process may have pruned it
        fsync_dir(directory)
    return final


def _remove_stale_partials(directory: Path, pattern: re.Pattern[str] = _PARTIAL_NAME) -> None:
    """Remove the files matching ``pattern`` (group 1: a PID) whose process died."""
    try:
        names = os.listdir(directory)
    except OSError:
        return  # best effort: the next backup or restore tries again
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or int(m[1]) == os.getpid() or _alive(int(m[1])):
            continue
        (directory / name).unlink(missing_ok=True)


_RESTORE_NAME = re.compile(r"\..+\.restore-(\d+)-[0-9a-z]+(?:-journal|-wal|-shm)?")


def restore_staging(live: Path) -> Path:
    """Return a new name beside ``live`` for a backup being restored over it.

    A restore killed half-way leaves a whole database copy there; the files of processes
    that are gone are removed first.
    """
    _remove_stale_partials(live.parent, _RESTORE_NAME)
    return live.with_name(f".{live.name}.restore-{os.getpid()}-{new_record_id()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def fsync_dir(directory: Path) -> None:
    """Make renames and unlinks in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- restoring -------------------------------------------------------------------------------


def _uri(path: Path, mode: str) -> str:
    return f"file:{quote(str(path.absolute()))}?mode={mode}"


def file_problem(conn: sqlite3.Connection) -> str | None:
    """What is wrong with a database file about to replace or become a project, or None.

    ``integrity_check``, and ``foreign_key_check`` as ``check(full=True)`` runs it: a flipped
    bit in the schema's text (a ``REFERENCES`` clause) passes the first and breaks every
    foreign key. Raises ``sqlite3.Error`` when a check cannot run on the file.
    """
    rows = conn.execute("PRAGMA integrity_check(10)").fetchall()
    if rows != [("ok",)]:
        return f"failed its integrity check ({rows[0][0]})"
    violations = conn.execute("PRAGMA foreign_key_check").fetchmany(1)
    if violations:
        table, rowid, parent, _ = violations[0]
        return (
            f"breaks its foreign keys (a row of {table!r}, rowid {rowid}, names a missing "
            f"row of {parent!r})"
        )
    return None


_FOREIGN_HINT = (
    "it was not written by demiarch-store, or it was altered since; it was not used. "
    "Choose another backup"
)


def stage_restore(backup: Path, staging: Path | None, *, project: str | None, live: Path) -> str:
    """Check ``backup`` and copy it to ``staging`` (None: only check it); return its revision.

    The backup is opened read-only with ``trusted_schema=OFF``; it must pass
    ``integrity_check`` and ``foreign_key_check`` and carry a schema revision this code
    knows. The copy is made with ``write_snapshot`` (verified again, 0600, fsynced). Raises
    ``BackupError``; the live database is not touched.
    """

    def refuse(why: str, hint: str = "choose another backup") -> BackupError:
        return BackupError(f"cannot restore: {why}", project=project, path=backup, hint=hint)

    try:
        st = os.stat(backup)
    except FileNotFoundError:
        raise refuse("the backup does not exist") from None
    except OSError as exc:
        raise refuse(f"the backup cannot be read ({exc.strerror})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise refuse("the backup is not a regular file")
    if st.st_size == 0:
        raise refuse("the backup is empty")
    try:
        if live.exists() and os.path.samefile(backup, live):
            raise refuse("the backup is the live database itself")
    except OSError as exc:
        raise refuse(f"the backup cannot be read ({exc.strerror})") from exc
    if staging is not None:
        require_space(staging.parent, st.st_size, what="the backup", project=project, source=backup)
    try:
        source = sqlite3.connect(_uri(backup, "ro"), uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise refuse(f"the backup cannot be opened ({exc})") from exc
    try:
        try:
            harden(source)
            # The schema first: until it is known to be ours, nothing in the file may run
            # (integrity_check evaluates the expressions of its indexes and constraints).
            foreign = foreign_object(source)
            if foreign is not None:
                raise refuse(
                    f"the backup holds {foreign}, which demiarch-store never makes",
                    hint=_FOREIGN_HINT,
                )
            revision = read_revision(source)
            if revision is None:
                raise refuse("the file holds no demiarch-store schema")
            if revision not in known_revisions():
                raise refuse(
                    f"the backup is at schema revision {revision!r}, newer than this "
                    "demiarch-store knows",
                    hint="upgrade demiarch-store to restore it",
                )
            unlike = schema_problem(source, revision)
            if unlike is not None:
                raise refuse(f"the backup's schema {unlike}", hint=_FOREIGN_HINT)
            problem = file_problem(source)
        except (sqlite3.Error, UnicodeDecodeError) as exc:  # a flipped bit in a TEXT value
            raise refuse(f"the backup is not a healthy SQLite database ({exc})") from exc
        if problem is not None:
            raise refuse(f"the backup {problem}")
        if staging is None:
            return revision
        try:
            write_snapshot(source, staging)
        except (sqlite3.Error, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise BackupError(
                f"cannot restore: copying the backup next to the database failed ({why})",
                project=project,
                path=staging,
                hint="check the free space and permissions of the project directory",
            ) from exc
    finally:
        source.close()
    return revision


# Every SQLite connection to a WAL database holds a shared lock on this byte of the -shm file
# (the "DMS" lock of SQLite's unix VFS) for as long as it is open.
_SHM_DMS_BYTE = 128


def _open_elsewhere(live: Path, project: str | None) -> DatabaseBusy:
    return DatabaseBusy(
        "the project is open in another process",
        project=project,
        path=live,
        hint="close it there, then retry",
    )


@contextmanager
def no_other_users(live: Path, project: str | None) -> Iterator[None]:
    """Hold the -shm file's DMS lock exclusively: no other process has ``live`` open.

    Touches no file (unlike opening a SQLite connection, which may checkpoint or delete a
    WAL). Must only be used once this process has closed its own connections to ``live``:
    closing the descriptor drops every POSIX lock the process holds on the -shm file. Another
    store of this process on ``live`` is refused first: its locks cannot conflict with ours.
    """
    if open_in_this_process(live):
        raise DatabaseBusy(
            "the project is open in another store of this process",
            project=project,
            path=live,
            hint="close the other AsyncProjectStore (or Store) on it, then retry",
        )
    try:
        fd = os.open(f"{live}-shm", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        yield  # no -shm: no connection in WAL mode is open
        return
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _SHM_DMS_BYTE, os.SEEK_SET)
        except OSError as exc:
            raise _open_elsewhere(live, project) from exc
        yield
    finally:
        os.close(fd)


def _guard(live: Path, project: str | None) -> sqlite3.Connection | None:
    """Lock ``live`` against every other connection before its files are moved or replaced.

    In exclusive locking mode, leaving WAL mode needs the only open connection: it fails if any
    other process has the database open, and then holds the lock until closed. On the way it
    checkpoints the WAL into the file and deletes it. Returns None for a file SQLite cannot
    read (corrupt), which nobody can be using either.
    """
    try:
        guard = sqlite3.connect(_uri(live, "rw"), uri=True, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        guard.execute("PRAGMA busy_timeout = 0")
        guard.execute("PRAGMA locking_mode = EXCLUSIVE")
        guard.execute("PRAGMA journal_mode = DELETE").fetchone()
    except sqlite3.Error as exc:
        guard.close()
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise _open_elsewhere(live, project) from exc
        return None
    return guard


def replace_database(staging: Path, live: Path, *, project: str | None) -> None:
    """Put ``staging`` in place of ``live`` atomically; the old file's -wal/-shm go first.

    A ``-wal`` left beside the new file would be replayed into it (SQLite cannot tell whose WAL
    it is), so the old WAL is checkpointed away and the side files removed before the rename;
    a crash at any point leaves either the old database, whole, or the new one.
    """
    with no_other_users(live, project):
        guard = _guard(live, project) if live.exists() else None
        try:
            for suffix in ("-wal", "-shm", "-journal"):
                if guard is not None and suffix == "-journal":
                    continue  # the guard's own (inactive) journal; it removes it on close
                Path(f"{live}{suffix}").unlink(missing_ok=True)
            os.replace(staging, live)
            fsync_dir(live.parent)
        finally:
            if guard is not None:
                guard.close()


# -- quarantine ------------------------------------------------------------------------------

QUARANTINE_DIR = "quarantine"


def quarantine_database(live: Path, *, project: str | None) -> tuple[Path, Path | None]:
    """Move the database and its side files into a new quarantine folder, together, unchanged.

    Then restore the newest backup that passes the checks of ``stage_restore``. Returns the
    quarantine folder and the backup restored (None when there was no good one).
    """
    parent = live.parent / QUARANTINE_DIR
    with no_other_users(live, project):
        make_private_dir(parent)
        while True:
            target = parent / f"{_utc_stamp()}-{new_record_id()[-6:]}"
            try:
                os.mkdir(target, 0o700)
            except FileExistsError:
                continue
            os.chmod(target, 0o700)
            break
        # Moved as they are: a WAL may hold the only copy of recent commits.
        for suffix in ("", "-wal", "-shm", "-journal"):
            src = Path(f"{live}{suffix}")
            if src.exists() or src.is_symlink():
                os.rename(src, target / src.name)
        fsync_dir(target)
        fsync_dir(live.parent)
    restored = None
    for backup in list_backups(live.parent / BACKUPS_DIR):
        staging = restore_staging(live)
        try:
            stage_restore(backup, staging, project=project, live=live)
        except (BackupError, StorageError) as exc:
            log.warning("skipping backup %s: %s", backup, exc)
            continue
        try:
            replace_database(staging, live, project=project)
        finally:
            remove_file(staging)
        restored = backup
        break
    return target, restored


# -- staging folders -------------------------------------------------------------------------

STALE_STAGING_AGE = 24 * 3600.0
"""An unlocked staging folder this old is stale even if a process with its PID is alive."""

# .<kind>-<pid>-<random>; folders from before the PID was in the name have none.
_STAGING_NAME = re.compile(r"\.(?:import|legacy|demiarch-export)-(?:(\d+)-)?[a-z0-9_]+")


class Staging:
    """A hidden working folder, ``<parent>/<prefix><pid>-<random>``, locked while in use.

    The folder is ``flock``-ed through a descriptor held until ``close()``, so a process killed
    half-way (kill -9, power loss) leaves a folder nobody holds, which the next ``Staging`` in
    the same parent removes (see ``remove_stale_staging``). Creating one removes stale ones.
    """

    def __init__(self, parent: Path, prefix: str) -> None:
        remove_stale_staging(parent)
        self.path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
        try:
            self._fd: int | None = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # waits only for a cleaner's brief look
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def close(self) -> None:
        """Remove the folder and everything left in it, then release it. Idempotent."""
        if self._fd is None:
            return
        try:
            shutil.rmtree(self.path, ignore_errors=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Staging:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def remove_stale_staging(parent: Path, *, max_age: float = STALE_STAGING_AGE) -> list[Path]:
    """Remove the staging folders under ``parent`` that a crash left behind; return them.

    A folder is removed only if nobody holds its lock (a live ``Staging`` always does) and
    either the process named in it is gone or it is older than ``max_age`` (a PID reused by
    another process, a folder from before PIDs were in the names, or the instant between a
    folder's creation and its lock). Never raises: cleaning up is best effort.
    """
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    removed = []
    for entry in entries:
        m = _STAGING_NAME.fullmatch(entry.name)
        if m is None:
            continue
        path = Path(entry.path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile, a link or not a folder: not ours to remove
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # in use
            pid = int(m[1]) if m[1] is not None else None
            gone = pid is not None and pid != os.getpid() and not _alive(pid)
            if gone or time.time() - os.fstat(fd).st_mtime > max_age:
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed the stale staging folder %s", path)
                removed.append(path)
        finally:
            os.close(fd)
    return removed
