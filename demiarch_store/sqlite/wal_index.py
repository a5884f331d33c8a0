"""The WAL index read in place: how many frames are not yet checkpointed, without a query."""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

log = logging.getLogger("demiarch_store")


class _Mapped:
    """The ``-shm`` file of one database, as this process's pools share it."""

    __slots__ = ("fd", "map", "users")

    def __init__(self) -> None:
        self.fd: int | None = None
        self.map: mmap.mmap | None = None
        self.users = 0


_u32: Final[Callable[[Any, int], tuple[int]]] = struct.Struct("=I").unpack_from
"""A 32-bit unsigned integer in this machine's byte order (the WAL index's), at an offset."""


_MAPPED: dict[tuple[int, int], _Mapped] = {}
"""By the database file's device and inode: every open pool of this process on it."""


_MAPPED_LOCK = threading.Lock()


def open_in_this_process(database: Path) -> bool:
    """Whether a pool of this process has ``database`` open (or is opening it).

    Then nothing else in this process may open and close a descriptor of the file: closing it
    would drop the locks SQLite holds on it for those pools (see ``WalIndex``).
    """
    try:
        st = os.stat(database)
    except OSError:
        return False
    with _MAPPED_LOCK:
        return (st.st_dev, st.st_ino) in _MAPPED


class WalIndex:
    """The WAL-index header at the start of the ``-shm`` file, read without SQLite.

    SQLite rewrites this 48-byte header on every commit of any connection in any process (its
    change counter, last frame, frame checksum and salts). While it is unchanged, a read
    transaction begun after it was read still shows the database as it is now: that is what
    lets a read epoch take new snapshots without ever being stale.
    The checkpoint's progress (``nBackfill``) follows the header's two copies: with the last
    frame, it tells how much of the WAL waits to be copied (``uncopied``).

    Closing *any* descriptor of a file drops every POSIX lock this process holds on it,
    SQLite's included: its lock on the ``-shm`` file tells other processes that the WAL index
    is in use, and without it the next process to open the database truncates and rebuilds
    the file under this process's connections (a bus error, or lost writes). So every pool of
    this process on one database shares one descriptor of the file (``attach``, before the
    pool's first connection opens), mapped read-only, which is closed only when the last of
    those pools has closed its connections (``close``).
    """

    __slots__ = ("_database", "_key", "_map", "_path")

    HEADER: Final = 48
    MAPPED_BYTES: Final = 100
    """Bytes mapped: the header, its copy, and the checkpoint's progress (``nBackfill``)."""

    def __init__(self, database: Path) -> None:
        self._database = database
        self._path = Path(f"{database}-shm")
        self._key: tuple[int, int] | None = None
        self._map: mmap.mmap | None = None

    def attach(self) -> None:
        """Count this pool as a user of the database's files (before its connections open)."""
        st = os.stat(self._database)
        key = (st.st_dev, st.st_ino)
        with _MAPPED_LOCK:
            _MAPPED.setdefault(key, _Mapped()).users += 1
        self._key = key

    def mapped(self) -> bool:
        """Whether the file is mapped (mapping it first if it is not yet, see ``refresh``)."""
        return self._map is not None or self.refresh() is not None

    def header(self) -> bytes | None:
        """Return the header, or None if the file is not mapped (yet)."""
        m = self._map
        return None if m is None else m[: self.HEADER]

    def frames(self) -> int:
        """Return the frames in the WAL (the header's ``mxFrame``), 0 if not mapped."""
        m = self._map
        return 0 if m is None else _u32(m, 16)[0]

    def uncopied(self) -> int:
        """Return the frames of the WAL a checkpoint has not copied into the database yet.

        ``mxFrame`` less the checkpoint's ``nBackfill`` (after the two copies of the header);
        0 if the file is not mapped, or if the two were read across a restart of the WAL.
        """
        m = self._map
        if m is None:
            if self.refresh() is None:
                return 0
            m = self._map
            assert m is not None
        return max(0, _u32(m, 16)[0] - _u32(m, 96)[0])

    def refresh(self) -> bytes | None:
        """Map the file if it is not mapped yet (it appears with WAL mode); return the header."""
        if self._map is None and self._key is not None:
            with _MAPPED_LOCK:
                self._map = self._map_file(_MAPPED[self._key])
        return self.header()

    def _map_file(self, entry: _Mapped) -> mmap.mmap | None:
        if entry.map is None:
            if entry.fd is None:
                try:
                    # From here the descriptor is closed only by the last close().
                    entry.fd = os.open(self._path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    return None
            try:
                size = self.MAPPED_BYTES
                if os.fstat(entry.fd).st_size >= size:
                    entry.map = mmap.mmap(entry.fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
            except (OSError, ValueError):
                return None
        return entry.map

    def close(self) -> None:
        """Stop using the file: the last pool of the process unmaps it and closes it.

        Call only once the pool's own connections to the database are closed.
        """
        self._map = None
        key, self._key = self._key, None
        if key is None:
            return
        with _MAPPED_LOCK:
            entry = _MAPPED[key]
            entry.users -= 1
            if entry.users:
                return
            del _MAPPED[key]
        if entry.map is not None:
            entry.map.close()
        if entry.fd is not None:
            os.close(entry.fd)
