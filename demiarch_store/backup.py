"""Backups: consistent online snapshots written with SQLite's backup API, files 0600.

Also the file work of restoring a backup and of quarantining a damaged database: everything
that creates, renames or removes database files outside SQLite.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from .errors import BackupError, DatabaseBusy
from .ids import DATABASE_NAME, new_record_id
from .migrate import known_revisions, read_revision

__all__ = [
    "BACKUPS_DIR",
    "QUARANTINE_DIR",
    "backups_dir_for",
    "fsync_dir",
    "list_backups",
    "quarantine_database",
    "remove_file",
    "replace_database",
    "stage_restore",
    "take_backup",
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
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(dest, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
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
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(f"{dest}{suffix}")
            except FileNotFoundError:
                pass
        raise


# -- taking backups --------------------------------------------------------------------------

BACKUPS_DIR = "backups"
# <sequence>-<UTC time>.sqlite: the sequence orders backups even if the clock jumps back; the
# time is for people. A file is only given such a name once it is complete and verified.
_BACKUP_NAME = re.compile(r"(\d{6,})-(\d{8}T\d{6}Z)\.sqlite")
_PARTIAL_NAME = re.compile(r"\.partial-(\d+)-[0-9a-z]+\.sqlite(?:-journal|-wal|-shm)?")


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
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            while True:
                existing = list_backups(directory)
                newest = _BACKUP_NAME.fullmatch(existing[0].name) if existing else None
                seq = int(newest[1]) + 1 if newest is not None else 1
                final = directory / f"{seq:06d}-{stamp}.sqlite"
                try:
                    os.link(partial, final)
                except FileExistsError:
                    continue  # another process took this number first
                break
    finally:
        os.unlink(partial)
    fsync_dir(directory)
    if keep is not None:
        for old in list_backups(directory)[keep:]:
            try:
                os.unlink(old)
            except FileNotFoundError:
                pass  # another process pruned it
        fsync_dir(directory)
    return final


def _remove_stale_partials(directory: Path) -> None:
    """Remove the partial files of backups whose process died (kill -9, power loss)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        m = _PARTIAL_NAME.fullmatch(name)
        if m is None or int(m[1]) == os.getpid() or _alive(int(m[1])):
            continue
        try:
            os.unlink(directory / name)
        except FileNotFoundError:
            pass


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


def stage_restore(backup: Path, staging: Path, *, project: str | None, live: Path) -> str:
    """Check ``backup`` and copy it to ``staging``; return its schema revision.

    The backup is opened read-only with ``trusted_schema=OFF``; it must pass
    ``integrity_check`` and carry a schema revision this code knows. The copy is made with
    ``write_snapshot`` (verified again, 0600, fsynced). Raises ``BackupError``; the live
    database is not touched.
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
    try:
        source = sqlite3.connect(_uri(backup, "ro"), uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise refuse(f"the backup cannot be opened ({exc})") from exc
    try:
        try:
            source.execute("PRAGMA trusted_schema = OFF")
            revision = read_revision(source)
            rows = source.execute("PRAGMA integrity_check(10)").fetchall()
        except (sqlite3.Error, UnicodeDecodeError) as exc:  # a flipped bit in a TEXT value
            raise refuse(f"the backup is not a healthy SQLite database ({exc})") from exc
        if rows != [("ok",)]:
            raise refuse(f"the backup failed its integrity check ({rows[0][0]})")
        if revision is None:
            raise refuse("the file holds no demiarch-store schema")
        if revision not in known_revisions():
            raise refuse(
                f"the backup is at schema revision {revision!r}, newer than this "
                "demiarch-store knows",
                hint="upgrade demiarch-store to restore it",
            )
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


@contextmanager
def no_other_users(live: Path, project: str | None) -> Iterator[None]:
    """Hold the -shm file's DMS lock exclusively: no other process has ``live`` open.

    Touches no file (unlike opening a SQLite connection, which may checkpoint or delete a
    WAL). Must only be used once this process has closed its own connections to ``live``:
    closing the descriptor drops every POSIX lock the process holds on the -shm file.
    """
    try:
        fd = os.open(f"{live}-shm", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        yield  # no -shm: no connection in WAL mode is open
        return
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _SHM_DMS_BYTE, os.SEEK_SET)
        except OSError as exc:
            raise DatabaseBusy(
                "the project is open in another process",
                project=project,
                path=live,
                hint="close it there, then retry",
            ) from exc
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
            raise DatabaseBusy(
                "the project is open in another process",
                project=project,
                path=live,
                hint="close it there, then retry",
            ) from exc
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
                try:
                    os.unlink(f"{live}{suffix}")
                except FileNotFoundError:
                    pass
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
        try:
            os.mkdir(parent, 0o700)
            os.chmod(parent, 0o700)
        except FileExistsError:
            pass
        while True:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            target = parent / f"{stamp}-{new_record_id()[-6:]}"
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
        staging = live.with_name(f".{live.name}.restore-{os.getpid()}-{new_record_id()}")
        try:
            stage_restore(backup, staging, project=project, live=live)
        except BackupError as exc:
            log.warning("skipping backup %s: %s", backup, exc)
            continue
        try:
            replace_database(staging, live, project=project)
        finally:
            remove_file(staging)
        restored = backup
        break
    return target, restored


def remove_file(path: Path) -> None:
    """Remove a database file and its side files if they exist."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass
