"""The order stream (``GET /orders/{id}/stream``) on the real store and Kafka, served by uvicorn.

The watch hub tails this module's own input topic and the rig's output topic (the production topics stay
untouched); each saga fact is published there, as upstream services do, and handed to the order's handlers -- of
a *replica*, so the copy serving the stream is not the one that wrote the change. Keys: storefront keys in the
test database's ``api_keys`` collection, behind the same ``KeyGuard`` the services run.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI

from services.conftest import Rig, eventually, new_order_id
from services.order.api import install_validation_handler, order_router
from services.order.handlers import Deps
from services.order.tracking import WatchHub
from shared.events import encode
from shared.events.base import Event
from shared.keys import KeyGuard, KeyStore, key_document, new_token
from shared.runtime import Service
from shared.tasks import cancelled
from tests.conftest import Endpoints
from tests.sse import Stream, read_stream
from tests.unit.factories import (
    order_placed,
    payment_authorized,
    payment_captured,
    payment_declined,
    shipment_scheduled,
    shipment_tracked,
    stock_reserved,
)

pytestmark = pytest.mark.infra

SHOP_A, SHOP_B = "shop-a", "shop-b"
KEEPALIVE = 0.3


@dataclass
class Tracking:
    url: str
    hub: WatchHub
    rig: Rig
    replica: Service
    producer: AIOKafkaProducer
    in_topic: str
    keys: dict[str, str]  # storefront -> token

    def headers(self, shop: str = SHOP_A, **more: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[shop], **more}

    async def place(self, shop: str = SHOP_A) -> str:
        order_id = new_order_id("TRACK")
        await self.rig.deliver(self.rig.deps, order_placed(order_id=order_id, storefront_id=shop))
        return order_id

    async def fact(self, order_id: str, event: Event) -> None:
        """What the saga does with a fact: published on a topic the copies read, handled by one copy (a replica)."""
        event = event.model_copy(update={"order_id": order_id})
        await self.producer.send_and_wait(self.in_topic, encode(event), key=order_id.encode())
        assert await self.rig.on(self.replica, event) == []


@pytest.fixture(scope="module")
async def tracking(rig: Rig, in_topic: str, endpoints: Endpoints) -> AsyncIterator[Tracking]:
    """The order router with a watch hub on the test topics, behind KeyGuard, served by uvicorn on a free port."""
    deps: Deps = rig.deps
    hub = WatchHub(store=deps.store, settings=rig.settings, topics=(in_topic, rig.topic), idle_stop_seconds=0.5)
    keys = {shop: new_token() for shop in (SHOP_A, SHOP_B)}
    api_keys = rig.db["api_keys"]
    for shop, token in keys.items():
        await api_keys.insert_one(key_document(token=token, storefront_id=shop, role="storefront", created_by="test"))
    app = FastAPI()
    install_validation_handler(app)
    app.include_router(order_router(rig.service, deps.store, hub=hub, keepalive_seconds=KEEPALIVE))
    guard = KeyStore(static_keys=frozenset(), lookup=api_keys, ttl=10)
    app.add_middleware(KeyGuard, keys=guard, required=True, max_body_bytes=256 * 1024, open_paths=frozenset())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    tail = asyncio.create_task(hub.run())
    producer = AIOKafkaProducer(bootstrap_servers=endpoints.kafka, acks="all")
    await producer.start()
    replica = await rig.replica()
    try:
        await eventually(lambda: server.started)
        yield Tracking(f"http://127.0.0.1:{port}", hub, rig, replica, producer, in_topic, keys)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout=10)
        await cancelled(tail)
        await producer.stop()


async def stream(t: Tracking, order_id: str, *, headers: dict[str, str], then: Any = None) -> Stream:
    """The order's stream from the test server, to its end; ``then()`` (the saga moving on) after the first event."""
    return await read_stream(f"{t.url}/orders/{order_id}/stream", headers=headers, then=then)


async def test_stream_sends_the_view_then_every_stage_until_delivered_and_ends(tracking: Tracking) -> None:
    t = tracking
    order_id = await t.place()

    async def saga() -> None:
        for fact in (
            payment_authorized(),
            stock_reserved(),
            shipment_scheduled(),
            payment_captured(),
            shipment_tracked("PICKED_UP", 5),
            shipment_tracked("DELIVERED", 60),
        ):
            await t.fact(order_id, fact)

    got = await stream(t, order_id, headers=t.headers(), then=saga)

    stages = [(data["status"], data["stage"]) for _, _, data in got.events]
    assert stages == [
        ("PENDING", "ACCEPTED"),
        ("PENDING", "PAYMENT_AUTHORIZED"),
        ("PENDING", "STOCK_RESERVED"),
        ("PENDING", "SHIPMENT_SCHEDULED"),
        ("COMPLETED", "DONE"),
        ("COMPLETED", "PICKED_UP"),
        ("COMPLETED", "DELIVERED"),
    ]
    ids = [i for i, _, _ in got.events]
    assert ids == sorted(set(ids)), f"ids must be increasing versions: {ids}"
    assert {name for _, name, _ in got.events} == {"order"}
    assert got.events[3][2]["shipment"]["tracking_number"] == shipment_scheduled().tracking_number
    async with httpx.AsyncClient(base_url=t.url) as http:
        now = await http.get(f"/orders/{order_id}", headers=t.headers())
    assert got.events[-1][2] == now.json()  # the same body as GET /orders/{id}
    stored = await t.rig.deps.store.read(order_id=order_id)
    assert ids[-1] == stored.version


async def test_a_cancelled_order_stream_ends_with_cancelled(tracking: Tracking) -> None:
    t = tracking
    order_id = await t.place()

    got = await stream(t, order_id, headers=t.headers(), then=lambda: t.fact(order_id, payment_declined()))

    assert [(d["status"], d["reason"]) for _, _, d in got.events] == [
        ("PENDING", None),
        ("CANCELLED", "payment_declined"),
    ]


async def test_resume_with_last_event_id_sends_nothing_older(tracking: Tracking) -> None:
    t = tracking
    order_id = await t.place()
    version = (await t.rig.deps.store.read(order_id=order_id)).version

    behind = await stream(
        t,
        order_id,
        headers=t.headers(**{"Last-Event-ID": str(version - 1) if version > 1 else "0"}),
        then=lambda: t.fact(order_id, payment_declined()),
    )
    resumed_at_end = await stream(t, order_id, headers=t.headers(**{"Last-Event-ID": str(behind.events[-1][0])}))

    assert behind.events[0][0] == version  # the current view: newer than the client's
    assert behind.events[-1][2]["status"] == "CANCELLED"
    assert resumed_at_end.status == 204  # it has the terminal state: nothing to send, do not reconnect
    assert resumed_at_end.events == []


async def test_resume_at_the_current_version_waits_for_the_next_change(tracking: Tracking) -> None:
    t = tracking
    order_id = await t.place()
    version = (await t.rig.deps.store.read(order_id=order_id)).version
    reading = asyncio.create_task(stream(t, order_id, headers=t.headers(**{"Last-Event-ID": str(version)})))
    await eventually(lambda: t.hub.streams > 0 and t.hub.live.is_set())

    await t.fact(order_id, payment_declined())
    got = await reading

    assert all(i > version for i, _, _ in got.events)
    assert [d["status"] for _, _, d in got.events] == ["CANCELLED"]


async def test_keys_are_checked_and_other_storefronts_orders_are_404_before_the_stream(tracking: Tracking) -> None:
    t = tracking
    order_id = await t.place(SHOP_A)
    async with httpx.AsyncClient(base_url=t.url, timeout=10) as http:
        path = f"/orders/{order_id}/stream"
        without = await http.get(path)
        wrong = await http.get(path, headers={"X-API-Key": "fk_" + "x" * 43})
        other_shop = await http.get(path, headers=t.headers(SHOP_B))
        unknown = await http.get(f"/orders/{new_order_id('NONE')}/stream", headers=t.headers())
        bad_resume = await http.get(path, headers=t.headers(**{"Last-Event-ID": "seven"}))

    assert (without.status_code, wrong.status_code) == (401, 401)
    assert (other_shop.status_code, unknown.status_code) == (404, 404)
    assert other_shop.json() == {"detail": f"unknown order {order_id}"}  # a plain answer, not a stream
    assert bad_resume.status_code == 422
    assert bad_resume.json()["detail"][0]["loc"] == ["header", "last-event-id"]
    assert t.hub.watches.get(order_id.encode()) is None  # refused requests leave no watch behind


async def test_an_idle_stream_gets_keepalive_comments(tracking: Tracking) -> None:
    t = tracking
    order_id = await t.place()
    lines: list[str] = []
    async with (
        httpx.AsyncClient(base_url=t.url, timeout=10) as http,
        http.stream("GET", f"/orders/{order_id}/stream", headers=t.headers()) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        async with asyncio.timeout(10):
            async for line in response.aiter_lines():
                lines.append(line)
                if line.startswith(":"):
                    break

    assert lines[0].startswith("id: ") or lines[0].startswith("event: ")
    assert lines[-1] == ": ping"


async def test_the_tail_stops_when_the_last_stream_closes(tracking: Tracking) -> None:
    t = tracking
    order_id = await t.place()
    reading = asyncio.create_task(stream(t, order_id, headers=t.headers()))
    await eventually(lambda: t.hub.live.is_set() and t.hub.streams == 1)

    await cancelled(reading)  # the client goes away

    await eventually(lambda: t.hub.streams == 0)
    await eventually(lambda: not t.hub.live.is_set())
    assert t.hub.watches == {}


async def test_many_streams_on_one_order_each_get_the_change(tracking: Tracking) -> None:
    t = tracking
    order_id = await t.place()
    first_sent: list[None] = []

    async def got_first() -> None:
        first_sent.append(None)

    readers = [asyncio.create_task(stream(t, order_id, headers=t.headers(), then=got_first)) for _ in range(20)]
    # Each stream has read the order and sent its view (a stream still reading when the change lands starts at it).
    await eventually(lambda: len(first_sent) == 20 and t.hub.streams == 20 and t.hub.live.is_set())

    await t.fact(order_id, payment_declined())
    results = await asyncio.gather(*readers)

    assert all([d["status"] for _, _, d in r.events] == ["PENDING", "CANCELLED"] for r in results)
    assert len({r.events[-1][0] for r in results}) == 1
