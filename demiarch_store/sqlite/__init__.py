"""The SQLite engine: connections, pragmas, the bounded pool, group commit and the busy retry.

Each connection lives on its own thread and runs *jobs*: plain functions of the connection that
do a whole piece of work (a unit of work, a read) in one hop. Jobs queued during one turn of the
event loop reach the thread as one batch, and a thread drains every job queued for it before it
reports back, so a burst of work costs one wake-up each way.

Writes go through one writer connection. Units of work that only write are *grouped*: every unit
queued while the writer is busy goes into the next SQLite transaction (undone and re-run with a
savepoint per unit if one fails, so one failing unit does not sink the others), and each caller
is acknowledged only after the shared COMMIT (group commit: one fsync for many units). A unit
that reads holds the writer until it ends; units that read one after the other on the writer's
thread are *chained* into one transaction, a savepoint each, acknowledged at its one COMMIT.
``project.read()`` snapshots that overlap share a read transaction (an *epoch*) on one reader
when that cannot hide a unit acknowledged before they began. A read by primary key in a
snapshot runs on the event loop's own thread when its reader's thread is idle
(``Pool.read_here``); so do small lone units of work, and units that read by ID while they
hold the writer (``Pool.commit_here``). A checkpointer connection copies the WAL into the
database, so no commit runs a checkpoint.

Modules, from the bottom up: ``worker`` (the connection thread), ``wal_index`` (the WAL index
read in place), ``connection`` (opening a connection, pragmas, running statements), ``state``
(what the parts of a pool share), ``checkpointer``, ``writer`` (group commit, held units,
chains), ``inplace`` (units run on the event loop's thread), ``readers`` (reader connections
and shared read epochs) and ``pool`` (``Pool``, which joins them).
"""

from .connection import RowMissing
from .pool import Pool
from .state import ELSEWHERE, UNFINISHED
from .wal_index import open_in_this_process
from .worker import Worker

__all__ = ["ELSEWHERE", "UNFINISHED", "Pool", "RowMissing", "Worker", "open_in_this_process"]
