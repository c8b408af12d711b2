"""Fixtures for end-to-end tests: the five services running as OS processes on the real local stack."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymongo import AsyncMongoClient

from shared import topics
from tests.conftest import Endpoints
from tests.unit.factories import order_placed_data

SERVICE_PORTS = {"order": 8080, "payment": 8081, "inventory": 8082, "shipping": 8083, "notify": 8084}
ORDER_API = "http://127.0.0.1:8080"
INVENTORY_API = "http://127.0.0.1:8082"


def order_body(order_id: str, **overrides: Any) -> dict[str, Any]:
    """The design's sample order for ``order_id``, with a per-order e-mail so mails can be counted.

    ``overrides`` replace nested fields, path parts joined by ``__`` (``payment__token="tok_decline"``).
    """
    body = order_placed_data(order_id=order_id)
    for envelope in ("event_type", "event_id", "occurred_at"):
        body.pop(envelope)
    body["customer"]["email"] = f"{order_id.lower()}@example.com"
    for key, value in overrides.items():
        target = body
        *path, last = key.split("__")
        for p in path:
            target = target[p]
        target[last] = value
    return body


def placed(order_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "event_type": "OrderPlaced",
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2026-11-25T08:00:00Z",
        **order_body(order_id, **overrides),
    }


def new_order_id(prefix: str = "E2E") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class System:
    endpoints: Endpoints
    producer: AIOKafkaProducer
    http: httpx.AsyncClient
    mongo: AsyncMongoClient[dict[str, Any]]

    async def send(
        self,
        value: dict[str, Any] | bytes,
        *,
        key: str,
        topic: str = topics.STOREFRONT_ORDERS,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        raw = value if isinstance(value, bytes) else json.dumps(value, ensure_ascii=False).encode()
        await self.producer.send_and_wait(topic, raw, key=key.encode(), headers=headers)

    async def order(self, order_id: str) -> dict[str, Any] | None:
        r = await self.http.get(f"{ORDER_API}/orders/{order_id}")
        return r.json() if r.status_code == 200 else None

    async def wait_for(
        self, order_id: str, *, status: str | set[str] | None = None, timeout: float = 30, until: Any = None
    ) -> dict[str, Any]:
        wanted = {status} if isinstance(status, str) else status
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            last = await self.order(order_id)
            if last is not None and (wanted is None or last["status"] in wanted) and (until is None or until(last)):
                return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"order {order_id} never reached {wanted or until}; last seen: {last}")

    async def ledger(self, order_id: str) -> dict[str, int]:
        """Money movements the sandbox provider recorded for the order, by operation."""
        counts: dict[str, int] = {}
        async for d in self.mongo["fulfil_payment"]["gateway_ledger"].find({"order_id": order_id}):
            counts[d["op"]] = counts.get(d["op"], 0) + 1
        return counts

    async def mails_to(self, address: str) -> list[dict[str, Any]]:
        r = await self.http.get(f"{self.endpoints.smtp_api_url}/api/v1/messages")
        return [m for m in r.json()["messages"] if any(t["Address"] == address for t in m["To"])]

    async def stock(self, sku: str) -> dict[str, Any]:
        return (await self.http.get(f"{INVENTORY_API}/stock/{sku}")).json()  # type: ignore[no-any-return]

    async def set_stock(self, sku: str, available: int) -> None:
        (await self.http.put(f"{INVENTORY_API}/stock/{sku}", json={"available": available})).raise_for_status()

    async def events(self, order_id: str, *topic_names: str) -> list[dict[str, Any]]:
        """Every event with this order's key on the given topics, read from the beginning, duplicates kept."""
        names = topic_names or topics.MAIN_TOPICS
        consumer = AIOKafkaConsumer(bootstrap_servers=self.endpoints.kafka, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = [TopicPartition(t, p) for t in names for p in (consumer.partitions_for_topic(t) or set())]
            if not parts:
                await consumer._client.force_metadata_update()
                parts = [TopicPartition(t, p) for t in names for p in (consumer.partitions_for_topic(t) or set())]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            out: list[dict[str, Any]] = []

            async def behind() -> bool:
                return any([await consumer.position(tp) < ends[tp] for tp in parts])

            while await behind():
                batch = await consumer.getmany(timeout_ms=500)
                for recs in batch.values():
                    for rec in recs:
                        if rec.key == order_id.encode():
                            try:
                                out.append({"topic": rec.topic, **json.loads(rec.value)})
                            except ValueError:
                                out.append({"topic": rec.topic, "raw": rec.value})
            return out
        finally:
            await consumer.stop()


def fulfil(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The operator CLI, as an operator runs it (``env``: its whole environment, e.g. a secured cluster's)."""
    return subprocess.run(
        [sys.executable, "-m", "tools.fulfil.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def issue(storefront: str, role: str = "storefront") -> dict[str, Any]:
    """A new API key (``fulfil keys create``): its token, key_id and storefront."""
    done = fulfil("keys", "create", "--storefront", storefront, "--role", role, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def shops() -> Any:
    """Keys of two storefronts and an operator for this module, revoked afterwards."""
    run = uuid.uuid4().hex[:6]
    a, b, op = issue(f"shop-a-{run}"), issue(f"shop-b-{run}"), issue(f"ops-{run}", role="operator")
    yield a, b, op
    for key in (a, b, op):
        fulfil("keys", "revoke", key["key_id"], "--yes")


def distinct(events: list[dict[str, Any]], event_type: str) -> int:
    """How many different events of a type (a relay may publish one event twice; consumers dedupe on event_id)."""
    return len({e["event_id"] for e in events if e.get("event_type") == event_type})


@pytest.fixture(scope="session")
async def system(endpoints: Endpoints) -> AsyncIterator[System]:
    async with httpx.AsyncClient(timeout=10) as http:
        down = []
        for name, port in SERVICE_PORTS.items():
            try:
                ok = (await http.get(f"http://127.0.0.1:{port}/ready")).status_code == 200
            except httpx.HTTPError:
                ok = False
            if not ok:
                down.append(name)
        if down:
            pytest.fail(f"services not ready: {', '.join(down)}: run `make up` first", pytrace=False)
        producer = AIOKafkaProducer(bootstrap_servers=endpoints.kafka, acks="all", enable_idempotence=True)
        await producer.start()
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(endpoints.mongodb_url)
        try:
            yield System(endpoints, producer, http, mongo)
        finally:
            await producer.stop()
            await mongo.close()
