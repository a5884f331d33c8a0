"""How the integrations read: in place on the event loop when they can."""

from __future__ import annotations

from ..project import AsyncProjectStore
from ..transaction import Snapshot, Transaction

__all__ = ["quick_read"]


def quick_read(project: AsyncProjectStore) -> Snapshot | Transaction:
    """Return what to read in: a unit of work when nothing else is in flight, else a snapshot.

    A query read in a unit of work runs in place on the event loop while the writer's thread is
    idle, and a unit that only reads commits nothing; a general query in ``project.read()`` takes
    a hop to a reader's thread and back, which costs a lone caller more than SQLite spends on the
    query (LangGraph superstep at 1 thread: +20-35%). Under load, snapshots share read
    transactions on the readers and leave the writer to the writes, so they win there.
    Either way the read sees every unit acknowledged before it began. On PostgreSQL (a project
    without a file) a unit that reads locks its project's row until it ends, so reads there are
    always snapshots, which run side by side.
    """
    if project.busy or project.path is None:
        return project.read()
    return project.transaction()
