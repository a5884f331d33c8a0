"""DemiarchStore: LangGraph's BaseStore on a real project file, side by side with LangGraph's
own InMemoryStore where their behaviour is the same."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from langgraph.store.base import Item
from langgraph.store.memory import InMemoryStore

from demiarch_store import AsyncProjectStore, InvalidValue, Store, StoreConfig
from demiarch_store.integrations.langgraph import DemiarchStore, SyncCallOnLoop

pytestmark = pytest.mark.anyio


@pytest.fixture
def config(engine_config: StoreConfig) -> StoreConfig:
    """The tests that take ``config`` run on SQLite and on PostgreSQL (conftest.engine_config);
    the others need a project file (another process opens it, or it is killed) and say so."""
    return engine_config


@asynccontextmanager
async def opened(config: StoreConfig, project_id: str | None = None) -> AsyncIterator[Any]:
    """A new project (or ``project_id`` again) on ``config``'s engine, closed with its store."""
    async with Store(config) as store:
        if project_id is None:
            yield await store.create_project(name="langgraph")
        else:
            yield await store.open_project(project_id)


DOCS: list[tuple[tuple[str, ...], str, dict[str, Any]]] = [
    (("users", "alice", "memories"), "m1", {"text": "likes dark roast coffee", "score": 3}),
    (("users", "alice", "memories"), "m2", {"text": "works on the Rust parser", "score": 8}),
    (("users", "alice", "prefs"), "theme", {"theme": "dark", "tags": ["a", "b"]}),
    (("users", "bob", "memories"), "m1", {"text": "drinks green tea", "score": 5}),
    (("users", "bob", "prefs"), "theme", {"theme": "light", "nested": {"level": 2}}),
    (("orgs", "acme"), "policy", {"text": "coffee is free", "score": 1}),
]


def _view(items: list[Any]) -> list[tuple[tuple[str, ...], str, Any]]:
    return [(i.namespace, i.key, i.value) for i in items]


async def test_get_put_delete_and_none_deletes(config: StoreConfig) -> None:
    async with opened(config) as project:
        store = DemiarchStore(project)
        await store.aput(("users", "u1"), "k", {"a": 1, "é": "ü"})
        item = await store.aget(("users", "u1"), "k")
        assert isinstance(item, Item) and item.value == {"a": 1, "é": "ü"}
        assert item.namespace == ("users", "u1") and item.key == "k"
        first = item.created_at
        await store.aput(("users", "u1"), "k", {"a": 2})
        again = await store.aget(("users", "u1"), "k")
        assert again is not None and again.value == {"a": 2}
        assert again.created_at == first and again.updated_at >= first
        await store.abatch([store_put(("users", "u1"), "k", None)])  # value None deletes
        assert await store.aget(("users", "u1"), "k") is None
        await store.aput(("users", "u1"), "k2", {"x": True})
        await store.adelete(("users", "u1"), "k2")
        assert await store.aget(("users", "u1"), "k2") is None
        with pytest.raises(InvalidValue):
            await store.abatch([store_put(("bad.label",), "k", {"a": 1})])
        with pytest.raises(InvalidValue):
            await store.abatch([store_put((), "k", {"a": 1})])
    # Durable: a new store on the same project sees what was committed.
    async with opened(config, project.id) as project:
        async with project.read() as r:
            assert await r.memory_items.count() == 0


def store_put(namespace: tuple[str, ...], key: str, value: Any) -> Any:
    from langgraph.store.base import PutOp

    return PutOp(namespace, key, value)


async def _both(store: Store, **kwargs: Any) -> tuple[AsyncProjectStore, DemiarchStore, Any]:
    project = await store.create_project(name="memory")
    ours = DemiarchStore(project, **kwargs)
    theirs = InMemoryStore(**kwargs)
    for ns, key, value in DOCS:
        await ours.aput(ns, key, value)
        await theirs.aput(ns, key, value)
    return project, ours, theirs


@pytest.mark.parametrize(
    ("prefix", "kwargs"),
    [
        (("users",), {}),
        (("users", "alice"), {}),
        (("users", "alice", "memories"), {}),
        (("users", "al"), {}),  # a label prefix is not a namespace prefix
        ((), {}),
        (("users",), {"filter": {"theme": "dark"}}),
        (("users", "alice", "memories"), {"filter": {"score": {"$gte": 5}}}),
        (("users", "bob", "memories"), {"filter": {"score": {"$gt": 3, "$lt": 8}}}),
        (("users", "alice", "memories"), {"filter": {"score": {"$ne": 8}, "text": {"$ne": "x"}}}),
        (("users",), {"filter": {"nested": {"level": 2}}}),
        (("users",), {"filter": {"tags": ["a", "b"]}}),
        ((), {"filter": {"missing": None}}),
        ((), {"limit": 2}),
        ((), {"limit": 2, "offset": 2}),
        ((), {"offset": 5}),
    ],
)
async def test_search_finds_what_in_memory_store_finds(
    store: Store, prefix: tuple[str, ...], kwargs: dict[str, Any]
) -> None:
    project, ours, theirs = await _both(store)
    try:
        got = await ours.asearch(prefix, **kwargs)
        want = await theirs.asearch(prefix, **kwargs)
        if "limit" in kwargs or "offset" in kwargs:
            # Pages of the same set: ours are newest first, LangGraph's in insertion order.
            everything = _view(await ours.asearch(prefix, limit=100))
            assert _view(got) == everything[kwargs.get("offset", 0) :][: kwargs.get("limit", 10)]
            assert len(got) == len(want)
        else:
            assert sorted(_view(got)) == sorted(_view(want))
        assert all(i.score is None for i in got)
    finally:
        await project.close()


async def test_a_namespace_prefix_matches_labels_exactly(config: StoreConfig) -> None:
    """Case counts, and a label prefix is not a namespace prefix, on both engines alike (not
    SQLite's LIKE, which ignores ASCII case)."""
    async with opened(config) as project:
        store = DemiarchStore(project)
        for ns in (("users", "a"), ("Users", "b"), ("USERS",), ("users2", "c"), ("users",)):
            await store.aput(ns, "k", {"ns": list(ns)})
        found = await store.asearch(("users",))
        assert sorted(i.namespace for i in found) == [("users",), ("users", "a")]
        assert await store.alist_namespaces(prefix=("users",)) == [("users",), ("users", "a")]
        assert [i.namespace for i in await store.asearch(("Users",))] == [("Users", "b")]


async def test_a_filter_on_an_integer_past_64_bits_is_invalid_on_both_engines(
    config: StoreConfig,
) -> None:
    async with opened(config) as project:
        store = DemiarchStore(project)
        await store.aput(("n",), "k", {"n": 2**63 - 1})
        assert [i.key for i in await store.asearch(("n",), filter={"n": 2**63 - 1})] == ["k"]
        with pytest.raises(InvalidValue, match="64-bit"):
            await store.asearch(("n",), filter={"n": 2**64})


async def test_comparison_operators_skip_items_without_the_key(store: Store) -> None:
    """LangGraph's in-memory store raises on these; ours compares like PostgreSQL's JSONB."""
    project, ours, _ = await _both(store)
    try:
        found = await ours.asearch((), filter={"score": {"$gte": 5}})
        assert sorted(i.value["score"] for i in found) == [5, 8]
        found = await ours.asearch((), filter={"score": {"$lt": 5}, "text": {"$ne": "x"}})
        assert sorted(i.value["score"] for i in found) == [1, 3]
        with pytest.raises(InvalidValue):
            await ours.asearch((), filter={"score": {"$near": 5}})
    finally:
        await project.close()


async def test_text_query_ranks_by_the_words_it_finds(store: Store) -> None:
    project, ours, _ = await _both(store)
    try:
        hits = await ours.asearch((), query="dark coffee")
        # Ties: the most recently updated first.
        assert [(i.key, i.score) for i in hits] == [("m1", 1.0), ("policy", 0.5), ("theme", 0.5)]
        assert await ours.asearch(("users",), query="nothing matches this") == []
        tea = await ours.asearch(("users",), query="TEA", filter={"score": 5})
        assert [(i.namespace, i.key) for i in tea] == [(("users", "bob", "memories"), "m1")]
    finally:
        await project.close()


def _embed(texts: list[str]) -> list[list[float]]:
    """A deterministic embedding for tests: letter counts (26 dimensions)."""
    out = []
    for text in texts:
        v = [0.0] * 26
        for ch in text.lower():
            if "a" <= ch <= "z":
                v[ord(ch) - 97] += 1.0
        out.append(v)
    return out


async def test_vector_search_ranks_like_in_memory_store(store: Store) -> None:
    index = {"dims": 26, "embed": _embed, "fields": ["text"]}
    project, ours, theirs = await _both(store, index=index)
    try:
        for query in ("coffee roast", "green tea", "rust parser"):
            got = await ours.asearch((), query=query, limit=10)
            want = await theirs.asearch((), query=query, limit=10)
            scored = [(i.namespace, i.key) for i in got if i.score is not None]
            assert scored == [(i.namespace, i.key) for i in want if i.score is not None]
            assert len(scored) == 4
            unscored = {(i.namespace, i.key) for i in got if i.score is None}
            assert unscored == {(i.namespace, i.key) for i in want if i.score is None}
            for a, b in zip(got[:4], want[:4], strict=True):
                assert a.score is not None and b.score is not None
                assert math.isclose(a.score, b.score, rel_tol=1e-5)
        # Items without the indexed field come last, unscored (as in LangGraph's store).
        assert [i.score for i in got][-2:] == [None, None]
        async with project.read() as r:
            assert await r.memory_vectors.count() == 4  # one per item with a "text" field
        await ours.adelete(("users", "bob", "memories"), "m1")
        async with project.read() as r:
            assert await r.memory_vectors.count() == 3  # deleted with the item
        await ours.aput(("x",), "no-index", {"text": "coffee"}, index=False)
        async with project.read() as r:
            assert await r.memory_vectors.count() == 3
        with pytest.raises(InvalidValue):
            DemiarchStore(project, index={"embed": _embed})  # type: ignore[typeddict-item]
    finally:
        await project.close()


async def test_list_namespaces_like_in_memory_store(store: Store) -> None:
    project, ours, theirs = await _both(store)
    try:
        cases: list[dict[str, Any]] = [
            {},
            {"prefix": ("users",)},
            {"prefix": ("users", "*", "prefs")},
            {"suffix": ("memories",)},
            {"prefix": ("users",), "suffix": ("prefs",)},
            {"max_depth": 2},
            {"prefix": ("users",), "max_depth": 2, "limit": 1, "offset": 1},
            {"prefix": ("nope",)},
        ]
        for case in cases:
            assert await ours.alist_namespaces(**case) == await theirs.alist_namespaces(**case)
    finally:
        await project.close()


async def test_ttl_expires_refreshes_on_read_and_sweeps(config: StoreConfig) -> None:
    ttl = 1.5  # seconds: reads 0.3 s apart keep an item alive even on a loaded machine
    async with opened(config) as project:
        store = DemiarchStore(project, ttl={"default_ttl": ttl / 60, "refresh_on_read": True})
        await store.aput(("s",), "kept", {"v": 1})
        await store.aput(("s",), "read", {"v": 2})
        await store.aput(("s",), "forever", {"v": 3}, ttl=None)
        await store.aput(("s",), "norefresh", {"v": 4})
        for _ in range(4):  # read "read" every 0.3 s: its TTL restarts each time
            await asyncio.sleep(0.3)
            assert await store.aget(("s",), "read") is not None
            await store.aget(("s",), "norefresh", refresh_ttl=False)  # does not restart it
        await asyncio.sleep(0.6)
        # "kept" and "norefresh" were not refreshed: expired, and reads no longer return them.
        assert await store.aget(("s",), "kept", refresh_ttl=False) is None
        assert await store.aget(("s",), "norefresh", refresh_ttl=False) is None
        keys = {i.key for i in await store.asearch(("s",), refresh_ttl=False)}
        assert keys == {"read", "forever"}
        assert await store.sweep_ttl() == 2  # kept and norefresh, deleted for good
        async with project.read() as r:
            assert await r.memory_items.count() == 2
        await asyncio.sleep(ttl + 0.2)  # now "read" expires too; the sweeper deletes it
        task = await store.start_ttl_sweeper(sweep_interval_minutes=0.05 / 60)
        for _ in range(100):
            async with project.read() as r:
                if await r.memory_items.count() == 1:
                    break
            await asyncio.sleep(0.05)
        assert await store.stop_ttl_sweeper(timeout=5) and task.done()
        assert [i.key for i in await store.asearch(("s",))] == ["forever"]


async def test_sync_calls_from_another_thread_and_a_clear_error_on_the_loop(
    config: StoreConfig,
) -> None:
    async with opened(config) as project:
        store = DemiarchStore(project)
        out: dict[str, Any] = {}

        def worker() -> None:
            store.put(("t",), "k", {"from": "thread"})
            out["item"] = store.get(("t",), "k")
            out["found"] = store.search(("t",))

        thread = threading.Thread(target=worker)
        thread.start()
        await asyncio.wait_for(asyncio.to_thread(thread.join, 30), timeout=60)
        assert out["item"].value == {"from": "thread"} and len(out["found"]) == 1
        with pytest.raises(SyncCallOnLoop) as info:
            store.get(("t",), "k")
        assert "async" in str(info.value) and project.id in str(info.value)
