"""Project and record IDs, and the paths derived from them.

IDs are Crockford base32 in lowercase: a 48-bit millisecond timestamp (10 characters) followed
by random bits, so they sort by creation time. Within one process they are strictly increasing:
two IDs made in the same millisecond differ in the random part, which is incremented.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

from .errors import InvalidProjectId

__all__ = [
    "DATABASE_NAME",
    "MARKER_NAME",
    "MAX_ID_LENGTH",
    "database_path",
    "new_project_id",
    "new_record_id",
    "new_record_ids",
    "validate_project_id",
]

DATABASE_NAME = "database.sqlite"
MARKER_NAME = ".demiarch-project"
"""The file the library writes in every project folder it makes: it tells a project whose
database is missing from a folder that never was a project."""
MAX_ID_LENGTH = 64
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
# Only lowercase letters, digits, '-' and '_'; must start with a letter or digit. This keeps out
# separators, '..', URL escapes ('%'), query strings ('?', '#'), NUL and Unicode look-alikes.
_VALID = re.compile(r"[0-9a-z][0-9a-z_-]{0,63}")


def _encode(value: int, length: int) -> str:
    """Return the last ``length`` Crockford base32 digits of ``value`` (the reference form)."""
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


# The last two digits (10 bits) of every pair of digits, for the fast path below.
_PAIRS = [x + y for x in _ALPHABET for y in _ALPHABET]


def _encode2(value: int, length: int) -> str:
    """``_encode`` two digits per step (``length`` even): the prefix changes every millisecond."""
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in range(5 * length - 10, -1, -10)])


class _Monotonic:
    """Time-ordered IDs, strictly increasing within the process."""

    def __init__(self, random_chars: int) -> None:
        self._chars = random_chars
        self._bits = random_chars * 5
        self._lock = threading.Lock()
        self._prefix = ""
        self._last_ms = -1
        self._last_rand = 0

    def __call__(self) -> str:
        with self._lock:
            return self._step()

    def many(self, n: int) -> list[str]:
        """Return ``n`` new IDs, in increasing order (one lock for the batch).

        After the first, IDs continue the same millisecond with the random part counting up:
        runs of up to 1,024 share a prefix and take their last two digits from a slice.
        """
        out: list[str] = []
        with self._lock:
            while len(out) < n:
                if not out:
                    out.append(self._step())
                    continue
                rand = self._last_rand
                low = rand & 1023
                k = min(1023 - low, n - len(out), (1 << self._bits) - 1 - rand)
                if k <= 0:
                    out.append(self._step())  # the last two digits wrap: a new prefix
                    continue
                prefix = self._prefix
                out += [prefix + pair for pair in _PAIRS[low + 1 : low + 1 + k]]
                self._last_rand = rand + k
        return out

    def _step(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms <= self._last_ms:
            ms = self._last_ms
            rand = self._last_rand + 1
            if rand >> self._bits:  # the random part overflowed: borrow the next millisecond
                ms += 1
                rand = int.from_bytes(os.urandom(16), "big") >> (128 - self._bits + 1)
        else:
            # Leave the top bit clear so increments within a millisecond cannot overflow.
            rand = int.from_bytes(os.urandom(16), "big") >> (128 - self._bits + 1)
        if ms != self._last_ms or rand >> 10 != self._last_rand >> 10:
            # IDs are made on every insert: re-encode all but the last two digits only when
            # they change (once per millisecond, or every 1,024 IDs).
            self._prefix = _encode2(ms, 10) + _encode2(rand >> 10, self._chars - 2)
        self._last_ms, self._last_rand = ms, rand
        return self._prefix + _PAIRS[rand & 1023]


new_project_id = _Monotonic(random_chars=6)
"""Return a new project ID: 16 characters, sortable by creation time."""

new_record_id = _Monotonic(random_chars=16)
"""Return a new record ID: 26 characters (ULID-like), sortable by creation time."""

new_record_ids = new_record_id.many
"""Return ``n`` new record IDs at once, in increasing order."""


def validate_project_id(project_id: object) -> str:
    """Return ``project_id`` if it is a safe directory name, else raise ``InvalidProjectId``."""
    if not isinstance(project_id, str) or not _VALID.fullmatch(project_id):
        shown = repr(project_id)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise InvalidProjectId(
            f"invalid project ID {shown}",
            hint=(
                f"IDs are 1-{MAX_ID_LENGTH} characters of lowercase letters, digits, '-' and '_', "
                "starting with a letter or digit; use the ID that create_project() returned"
            ),
        )
    return project_id


def database_path(projects_dir: Path, project_id: str) -> Path:
    """Return ``<projects_dir>/<project_id>/database.sqlite`` for a valid ID."""
    return projects_dir / validate_project_id(project_id) / DATABASE_NAME
