"""``DemiarchStore``: LangGraph's long-term memory (``BaseStore``) on a project.

Documents live in ``memory_items`` (namespace labels joined with ``.``, which LangGraph forbids
inside a label), their embeddings in ``memory_vectors``. Imported by ``.langgraph``.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from array import array
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    Item,
    ListNamespacesOp,
    MatchCondition,
    NotProvided,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
)
from langgraph.store.base.embed import ensure_embeddings, get_text_at_path, tokenize_path

from ..errors import InvalidValue, StoreError
from ..project import AsyncProjectStore
from ..records import MemoryItem

__all__ = ["DemiarchStore", "SyncCallOnLoop", "run_on_loop"]

T = TypeVar("T")


class SyncCallOnLoop(StoreError, RuntimeError):
    """A synchronous method was called on the event loop the saver or store runs on (it would
    wait for itself forever): use the ``a``-prefixed method, or call from another thread."""


def run_on_loop(
    loop: asyncio.AbstractEventLoop | None,
    coro: Coroutine[Any, Any, T],
    project: AsyncProjectStore,
    who: str,
) -> T:
    """Run ``coro`` on ``loop`` (the one that opened the project) from another thread, and wait
    for its result; on ``loop``'s own thread, raise ``SyncCallOnLoop`` instead of hanging."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is None or loop.is_closed():
        coro.close()
        raise SyncCallOnLoop(
            f"{who} has no running event loop to run on",
            project=project.id,
            path=project.path,
            hint=f"create {who} inside the event loop that opened the project, and keep that "
            "loop running while other threads call its sync methods",
        )
    if running is loop:
        coro.close()
        raise SyncCallOnLoop(
            f"a synchronous {who} method was called on its own event loop's thread, where it "
            "would wait for itself forever",
            project=project.id,
            path=project.path,
            hint="use the async method (await saver.aget_tuple(...), graph.ainvoke(...)), or "
            "call the sync one from another thread",
        )
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


class DemiarchStore(BaseStore):
    """LangGraph's long-term memory store on a demiarch-store project.

    ``DemiarchStore(project)`` takes an open ``AsyncProjectStore``; create it on the event loop
    that opened the project (the sync methods run there, from other threads).

    Supported: ``get``, ``put`` (a value of ``None`` deletes), ``delete``, ``search`` (namespace
    prefix, ``filter`` on the JSON value with LangGraph's operators ``$eq``, ``$ne``, ``$gt``,
    ``$gte``, ``$lt``, ``$lte`` and nested objects, ``limit``, ``offset``, and ``query``),
    ``list_namespaces`` (prefix and suffix conditions with ``*``, ``max_depth``, ``limit``,
    ``offset``), and TTL (``ttl=`` per item or ``TTLConfig(default_ttl=...)``, refreshed on
    reads unless ``refresh_ttl=False``, ``sweep_ttl()`` and ``start_ttl_sweeper()``).

    ``query`` without an ``index``: text matching. Items are ranked by the share of the query's
    words found in their JSON value (case-insensitive); items with none are left out.
    ``query`` with ``index={"dims": ..., "embed": ..., "fields": [...]}`` (a LangChain
    ``Embeddings`` or a function of your own): semantic search. Each put embeds the indexed
    fields; a search ranks the items under the prefix by exact cosine similarity, computed in
    Python (no approximate index: meant for the thousands of memories of a project, not
    millions). Expired items are never returned, swept or not.
    """

    supports_ttl = True

    def __init__(
        self,
        project: AsyncProjectStore,
        *,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
    ) -> None:
        self.project = project
        self.ttl_config = ttl
        self.index_config = index.copy() if index else None
        self.embeddings = None
        self._fields: list[tuple[str, str | list[str]]] = []
        if self.index_config:
            if "dims" not in self.index_config or "embed" not in self.index_config:
                raise InvalidValue(
                    "an index needs 'dims' and 'embed'",
                    hint="index={'dims': 1536, 'embed': embeddings, 'fields': ['text']}",
                )
            self.embeddings = ensure_embeddings(self.index_config["embed"])
            self._fields = [
                (p, p if p == "$" else tokenize_path(p))
                for p in (self.index_config.get("fields") or ["$"])
            ]
        self._sweeper: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None

    # -- batches ------------------------------------------------------------------------------

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Run a batch: reads in one snapshot, then the puts (last one per key wins) and the
        TTL refreshes of what was read in one unit of work."""
        ops = list(ops)
        results: list[Result] = [None] * len(ops)
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        refresh: set[tuple[str, str]] = set()
        reads = [(i, op) for i, op in enumerate(ops) if not isinstance(op, PutOp)]
        for op in ops:
            if isinstance(op, PutOp):
                _check_namespace(op.namespace)
                puts[(op.namespace, op.key)] = op
            elif not isinstance(op, GetOp | SearchOp | ListNamespacesOp):
                raise InvalidValue(f"unknown store operation {type(op).__name__}")
        queries = {
            op.query: None
            for _, op in reads
            if isinstance(op, SearchOp) and op.query and self.embeddings is not None
        }
        vectors = await self._embed_queries(list(queries))
        if reads:
            async with self.project.read() as r:
                gets = [(i, op) for i, op in reads if isinstance(op, GetOp)]
                if gets:
                    keys = [(_join(op.namespace), str(op.key)) for _, op in gets]
                    found = {
                        (row.namespace, row.key): row for row in await r.memory_items.get_many(keys)
                    }
                    for (i, op), key in zip(gets, keys, strict=True):
                        row = found.get(key)
                        results[i] = None if row is None else _item(row)
                        if row is not None and op.refresh_ttl and row.ttl_minutes is not None:
                            refresh.add(key)
                for i, op in reads:
                    if isinstance(op, SearchOp):
                        rows, scores = await self._search(r, op, vectors)
                        results[i] = [
                            _item(row, score=score, search=True)
                            for row, score in zip(rows, scores, strict=True)
                        ]
                        if op.refresh_ttl:
                            refresh.update(
                                (row.namespace, row.key) for row in rows if row.ttl_minutes
                            )
                    elif isinstance(op, ListNamespacesOp):
                        results[i] = await self._namespaces(r, op)
        if puts or refresh:
            embedded = await self._embed_puts(list(puts.values()))
            async with self.project.transaction() as tx:
                if refresh:
                    await tx.memory_items.refresh(sorted(refresh))
                for op in puts.values():
                    ns, name = _join(op.namespace), str(op.key)
                    if op.value is None:
                        await tx.memory_items.delete(ns, name)
                        continue
                    await tx.memory_items.put(ns, name, op.value, ttl_minutes=self._ttl(op))
                    if self.embeddings is not None:
                        await tx.memory_vectors.replace(ns, name, embedded.get((ns, name), []))
        return results

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run a batch from a thread other than the store's event loop (see ``abatch``)."""
        return self._sync(self.abatch(list(ops)))

    # -- TTL ----------------------------------------------------------------------------------

    async def sweep_ttl(self) -> int:
        """Delete the items whose time to live has passed; return how many."""
        async with self.project.transaction() as tx:
            n = await tx.memory_items.count_expired()
            if n:
                await tx.memory_items.sweep()
        return n

    async def start_ttl_sweeper(
        self, sweep_interval_minutes: float | None = None
    ) -> asyncio.Task[None]:
        """Sweep expired items every ``sweep_interval_minutes`` (``TTLConfig``'s
        ``sweep_interval_minutes``, else 5) until ``stop_ttl_sweeper()`` or ``aclose()``."""
        if self._sweeper is not None and not self._sweeper.done():
            return self._sweeper
        minutes = (
            sweep_interval_minutes or (self.ttl_config or {}).get("sweep_interval_minutes") or 5
        )
        self._stop.clear()

        async def sweep_forever() -> None:
            while True:
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=minutes * 60)
                    return
                except TimeoutError:
                    pass
                await self.sweep_ttl()

        self._sweeper = asyncio.create_task(sweep_forever(), name="demiarch ttl sweeper")
        return self._sweeper

    async def stop_ttl_sweeper(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Stop the sweeper; return whether it stopped within ``timeout`` seconds."""
        task, self._sweeper = self._sweeper, None
        if task is None or task.done():
            return True
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=timeout)
        except TimeoutError:
            task.cancel()
            return False
        return True

    async def aclose(self) -> None:
        """Stop the sweeper (the project stays open: it belongs to the caller)."""
        await self.stop_ttl_sweeper()

    async def __aenter__(self) -> DemiarchStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- internals ----------------------------------------------------------------------------

    def _ttl(self, op: PutOp) -> float | None:
        ttl: Any = op.ttl
        if isinstance(ttl, NotProvided):
            return (self.ttl_config or {}).get("default_ttl")
        return None if ttl is None else float(ttl)

    async def _search(
        self, r: Any, op: SearchOp, vectors: dict[str, list[float]]
    ) -> tuple[list[MemoryItem], list[float | None]]:
        _check_prefix(op.namespace_prefix)
        prefix = _join(op.namespace_prefix)
        simple, rest = _split_filter(op.filter or {})
        if not op.query and not rest:
            rows = await r.memory_items.search(
                prefix, filter=simple, limit=op.limit, offset=op.offset
            )
            return rows, [None] * len(rows)
        rows = await r.memory_items.search(prefix, filter=simple)
        if rest:
            rows = [row for row in rows if _matches(row.value, rest)]
        if not op.query:
            rows = rows[op.offset : op.offset + op.limit]
            return rows, [None] * len(rows)
        if self.embeddings is not None:
            query = vectors[op.query]
            best: dict[tuple[str, str], float] = {}
            for v in await r.memory_vectors.under(prefix):
                score = _cosine(query, _floats(v.embedding))
                key = (v.namespace, v.key)
                best[key] = max(score, best.get(key, -math.inf))
            scored = [(best[(x.namespace, x.key)], x) for x in rows if (x.namespace, x.key) in best]
            scored.sort(key=lambda s: -s[0])
            ranked: list[tuple[float | None, MemoryItem]] = list(scored)
            ranked += [(None, x) for x in rows if (x.namespace, x.key) not in best]
        else:
            words = op.query.lower().split()
            ranked = []
            for x in rows:
                text = json.dumps(x.value, ensure_ascii=False).lower()
                hits = sum(1 for w in words if w in text)
                if hits:
                    ranked.append((hits / len(words), x))
            ranked.sort(key=lambda s: -(s[0] or 0.0))
        page = ranked[op.offset : op.offset + op.limit]
        return [x for _, x in page], [s for s, _ in page]

    async def _namespaces(self, r: Any, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        prefix = None
        for condition in op.match_conditions or ():
            if condition.match_type == "prefix" and "*" not in condition.path:
                prefix = _join(tuple(condition.path))
                break
        found = [tuple(ns.split(".")) for ns in await r.memory_items.namespaces(prefix)]
        found = [ns for ns in found if all(_does_match(c, ns) for c in op.match_conditions or ())]
        if op.max_depth is not None:
            found = sorted({ns[: op.max_depth] for ns in found})
        return found[op.offset : op.offset + op.limit]

    async def _embed_queries(self, queries: list[str]) -> dict[str, list[float]]:
        if not queries or self.embeddings is None:
            return {}
        done = await asyncio.gather(*(self.embeddings.aembed_query(q) for q in queries))
        return {q: self._check_dims(list(v)) for q, v in zip(queries, done, strict=True)}

    async def _embed_puts(
        self, puts: Sequence[PutOp]
    ) -> dict[tuple[str, str], list[tuple[str, bytes]]]:
        if self.embeddings is None:
            return {}
        texts: list[str] = []
        where: list[tuple[str, str, str]] = []
        for op in puts:
            if op.value is None or op.index is False:
                continue
            fields = (
                self._fields
                if op.index is None
                else [(p, p if p == "$" else tokenize_path(p)) for p in op.index]
            )
            for path, tokens in fields:
                found = get_text_at_path(op.value, tokens)
                for n, text in enumerate(found):
                    texts.append(text)
                    where.append(
                        (_join(op.namespace), op.key, f"{path}.{n}" if len(found) > 1 else path)
                    )
        if not texts:
            return {}
        vectors = await self.embeddings.aembed_documents(texts)
        if len(vectors) != len(texts):
            raise InvalidValue(
                f"the embedding function returned {len(vectors)} vectors for {len(texts)} texts"
            )
        out: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
        for (ns, key, field), vector in zip(where, vectors, strict=True):
            out.setdefault((ns, key), []).append((field, _pack(self._check_dims(list(vector)))))
        return out

    def _check_dims(self, vector: list[float]) -> list[float]:
        dims = (self.index_config or {}).get("dims")
        if dims is not None and len(vector) != dims:
            raise InvalidValue(
                f"the embedding function returned {len(vector)} dimensions, the index has {dims}",
                hint="set index['dims'] to the embedding model's dimensions",
            )
        return vector

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        return run_on_loop(self.loop, coro, self.project, "DemiarchStore")


def _join(namespace: Sequence[str]) -> str:
    return ".".join(namespace)


def _check_namespace(namespace: tuple[str, ...]) -> None:
    if not namespace:
        raise InvalidValue("a namespace needs at least one label", hint="e.g. ('users', '42')")
    _check_prefix(namespace)


def _check_prefix(namespace: tuple[str, ...]) -> None:
    for label in namespace:
        if not isinstance(label, str) or not label or "." in label or "\x00" in label:
            raise InvalidValue(
                f"invalid namespace label {label!r}",
                hint="labels are non-empty strings without '.' or NUL",
            )


def _item(row: MemoryItem, *, score: float | None = None, search: bool = False) -> Item:
    namespace = tuple(row.namespace.split("."))
    if search:
        return SearchItem(
            namespace, row.key, row.value, row.created_at, row.updated_at, score=score
        )
    return Item(
        value=row.value,
        key=row.key,
        namespace=namespace,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _split_filter(filter: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a filter into what SQL compares (top-level scalars) and what Python does."""
    simple = {
        k: v for k, v in filter.items() if v is None or isinstance(v, bool | int | float | str)
    }
    return simple, {k: v for k, v in filter.items() if k not in simple}


def _matches(value: Any, filter: dict[str, Any]) -> bool:
    return isinstance(value, dict) and all(_compare(value.get(k), v) for k, v in filter.items())


def _compare(value: Any, expected: Any) -> bool:
    """Compare like LangGraph's stores (PostgreSQL JSONB semantics): nested objects, lists and
    the operators ``$eq``, ``$ne``, ``$gt``, ``$gte``, ``$lt``, ``$lte``."""
    if isinstance(expected, dict):
        if any(k.startswith("$") for k in expected):
            return all(_operator(value, op, operand) for op, operand in expected.items())
        return isinstance(value, dict) and all(
            _compare(value.get(k), v) for k, v in expected.items()
        )
    if isinstance(expected, list | tuple):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(expected)
            and all(_compare(a, b) for a, b in zip(value, expected, strict=True))
        )
    return bool(value == expected)


def _operator(value: Any, op: str, operand: Any) -> bool:
    if op == "$eq":
        return bool(value == operand)
    if op == "$ne":
        return bool(value != operand)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        try:
            a, b = float(value), float(operand)
        except (TypeError, ValueError):
            return False
        return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]
    raise InvalidValue(
        f"unsupported filter operator {op!r}", hint="use $eq, $ne, $gt, $gte, $lt, $lte"
    )


def _does_match(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = zip(namespace, path, strict=False)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(namespace), reversed(path), strict=False)
    else:
        raise InvalidValue(f"unsupported match type {condition.match_type!r}")
    return all(p == "*" or n == p for n, p in pairs)


def _pack(vector: list[float]) -> bytes:
    packed = array("f", vector)
    if sys.byteorder != "little":  # pragma: no cover - stored little-endian everywhere
        packed.byteswap()
    return packed.tobytes()


def _floats(data: bytes) -> array[float]:
    out = array("f")
    out.frombytes(data)
    if sys.byteorder != "little":  # pragma: no cover
        out.byteswap()
    return out


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = math.fsum(x * y for x, y in zip(a, b, strict=False))
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return dot / norm if norm else 0.0
