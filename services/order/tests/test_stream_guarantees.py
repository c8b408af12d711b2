"""The order stream without Kafka or the store: a change made while the stream opens is never lost, and a caller's
open streams are bounded.

The watch hub tails a fake consumer (records pushed by the test) and reads an in-memory store; the router runs
behind the same ``KeyGuard`` as the service, served by uvicorn on a free port.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
import uvicorn
from aiokafka import TopicPartition
from fastapi import FastAPI

from services.conftest import eventually
from services.order import tracking
from services.order.api import install_validation_handler, order_router
from services.order.domain import Order
from services.order.store import OrderStore
from services.order.tracking import WatchHub
from shared.keys import KeyGuard, KeyStore, key_document, new_token
from shared.mongo import Loaded
from shared.settings import ServiceSettings
from shared.tasks import cancelled
from tests.sse import Stream, read_stream

SHOP_A, SHOP_B = "shop-a", "shop-b"
LIMIT = 2
AT = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


@dataclass
class MemoryOrders:
    """The store's reads the stream makes, from memory; ``on_next_read`` runs inside the next read of an order."""

    versions: dict[str, list[Order]] = field(default_factory=dict)
    on_next_read: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)

    def write(self, order: Order) -> None:
        self.versions.setdefault(order.order_id, []).append(order)

    def _loaded(self, order_id: str, version: int) -> Loaded[Order]:
        return Loaded(order_id=order_id, state=self.versions[order_id][version - 1], version=version)

    async def read(self, *, order_id: str) -> Loaded[Order]:
        if order_id not in self.versions:
            return Loaded(order_id=order_id, state=None)
        read_now = len(self.versions[order_id])  # what a read sees when it starts ...
        if (hook := self.on_next_read.pop(order_id, None)) is not None:
            await hook()  # ... and returns, however long it takes
        return self._loaded(order_id, read_now)

    async def version(self, *, order_id: str, version: int) -> Loaded[Order] | None:
        known = self.versions.get(order_id, [])
        return self._loaded(order_id, version) if 1 <= version <= len(known) else None


class FakeTail:
    """The hub's consumer: every record the test pushes, on one partition."""

    def __init__(self) -> None:
        self.records: asyncio.Queue[bytes] = asyncio.Queue()
        self._client = SimpleNamespace(force_metadata_update=self._nothing)

    async def _nothing(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assign(self, parts: list[TopicPartition]) -> None:
        return None

    async def seek_to_end(self, *parts: TopicPartition) -> None:
        return None

    async def position(self, tp: TopicPartition) -> int:
        return 0

    async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
        try:
            key = await asyncio.wait_for(self.records.get(), timeout_ms / 1000)
        except TimeoutError:
            return {}
        return {TopicPartition("order.events", 0): [SimpleNamespace(key=key)]}


class KeyDocs:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = {d["_id"]: d for d in docs}

    async def find_one(self, filter: Any, /) -> dict[str, Any] | None:
        return self.docs.get(filter["_id"])


@dataclass
class Served:
    url: str
    hub: WatchHub
    store: MemoryOrders
    tail: FakeTail
    keys: dict[str, str]  # name -> token

    def headers(self, key: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[key]}

    async def stream(self, order_id: str, key: str, *, within: float = 30) -> Stream:
        return await read_stream(f"{self.url}/orders/{order_id}/stream", headers=self.headers(key), within=within)


def pending(order_id: str, shop: str) -> Order:
    return Order(order_id=order_id, placed_at=AT, storefront_id=shop)


@pytest.fixture
async def served(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    # A quick tail: polls of 50 ms, and "recently seen" keys forgotten after 50-100 ms.
    monkeypatch.setattr(tracking, "POLL_MS", 50)
    monkeypatch.setattr(tracking, "RECENT_SECONDS", 0.05)
    store = MemoryOrders()
    tail = FakeTail()
    hub = WatchHub(
        store=cast(OrderStore, store),
        settings=ServiceSettings(),
        topics=("order.events",),
        consumer_factory=lambda settings: cast(Any, tail),
        idle_stop_seconds=60,
    )
    keys = {"a1": new_token(), "a2": new_token(), "b": new_token()}
    shops = {"a1": SHOP_A, "a2": SHOP_A, "b": SHOP_B}
    docs = [
        key_document(token=t, storefront_id=shops[n], role="storefront", created_by="test") for n, t in keys.items()
    ]
    app = FastAPI()
    install_validation_handler(app)
    router = order_router(
        cast(Any, None), cast(OrderStore, store), hub=hub, keepalive_seconds=0.3, max_streams_per_caller=LIMIT
    )
    app.include_router(router)
    guard = KeyStore(static_keys=frozenset(), lookup=KeyDocs(docs), ttl=10)
    app.add_middleware(KeyGuard, keys=guard, required=True, max_body_bytes=256 * 1024, open_paths=frozenset())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    running = asyncio.create_task(hub.run())
    try:
        await eventually(lambda: server.started)
        yield Served(f"http://127.0.0.1:{port}", hub, store, tail, keys)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout=10)
        await cancelled(running)


async def test_a_change_written_while_the_stream_opens_is_sent_and_the_stream_ends(served: Served) -> None:
    s = served
    s.store.write(pending("ORD-OTHER", SHOP_B))  # another stream keeps the tail running, as on a busy copy
    other = asyncio.create_task(s.stream("ORD-OTHER", "b"))
    await eventually(lambda: s.hub.live.is_set() and s.hub.streams == 1)
    s.store.write(pending("ORD-1", SHOP_A))

    async def cancelled_meanwhile() -> None:
        # While the stream's first read is in flight: the order is cancelled and its record goes by the tail; the
        # read still returns what it saw when it started, and answers only after the tail has moved on.
        s.store.write(pending("ORD-1", SHOP_A).model_copy(update={"status": "CANCELLED", "stage": None}))
        await s.tail.records.put(b"ORD-1")
        await asyncio.sleep(0.5)

    s.store.on_next_read["ORD-1"] = cancelled_meanwhile
    got = await s.stream("ORD-1", "a1", within=5)

    assert [(i, d["status"]) for i, _, d in got.events] == [(1, "PENDING"), (2, "CANCELLED")]
    await eventually(lambda: "storefront:shop-a" not in s.hub.per_caller)  # its slot is free again
    assert b"ORD-1" not in s.hub.watches
    other.cancel()


async def test_a_callers_streams_are_bounded_with_429_and_retry_after(served: Served) -> None:
    s = served
    s.store.write(pending("ORD-A", SHOP_A))
    s.store.write(pending("ORD-B", SHOP_B))
    held = [asyncio.create_task(s.stream("ORD-A", key)) for key in ("a1", "a2")]  # two keys of one storefront
    await eventually(lambda: s.hub.per_caller["storefront:shop-a"] == LIMIT)

    async with httpx.AsyncClient(base_url=s.url, timeout=10) as http:
        refused = await http.get("/orders/ORD-A/stream", headers=s.headers("a1"))
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "10"
        assert "too many open order streams (2)" in refused.json()["detail"]
        unknown = await http.get("/orders/NOPE/stream", headers=s.headers("a1"))
        assert unknown.status_code == 429  # counted before anything is read
        async with http.stream("GET", "/orders/ORD-B/stream", headers=s.headers("b")) as other:
            assert other.status_code == 200  # another storefront has its own bound
        await eventually(lambda: "storefront:shop-b" not in s.hub.per_caller)

        held[0].cancel()  # one of shop-a's streams closes: its slot is free
        await eventually(lambda: s.hub.per_caller["storefront:shop-a"] == LIMIT - 1)
        gone = await http.get("/orders/NOPE/stream", headers=s.headers("a2"))
        assert gone.status_code == 404
        assert s.hub.per_caller["storefront:shop-a"] == LIMIT - 1  # a refused stream gives its slot back
        async with http.stream("GET", "/orders/ORD-A/stream", headers=s.headers("a2")) as again:
            assert again.status_code == 200
    held[1].cancel()
    await eventually(lambda: not s.hub.per_caller and not s.hub.watches)
