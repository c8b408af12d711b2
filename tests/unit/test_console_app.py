"""The console's HTTP surface in-process (no Kafka: the fold is fed by hand): keys, bad input, the board."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from shared import topics
from shared.fakes import InMemoryDatabase
from shared.keys import COLLECTION as KEYS
from shared.keys import KeyStore
from tools.console import state as console_state
from tools.console.app import create_app
from tools.console.sessions import COLLECTION as SESSIONS
from tools.console.sessions import Sessions
from tools.console.settings import ConsoleSettings
from tools.console.state import Console
from tools.ops import topic_log
from tools.ops.kpi.report import span

KEY = "unit-test-operator-key-0123"


@pytest.fixture
def console() -> Console:
    db = InMemoryDatabase()
    console = Console(ConsoleSettings(api_keys=SecretStr(KEY)), sessions=Sessions(db[SESSIONS]))
    console.keys = KeyStore(static_keys=frozenset({KEY}), lookup=db[KEYS], ttl=0)  # no store in the unit tier
    return console


@pytest.fixture
def client(console: Console) -> Iterator[TestClient]:
    with TestClient(create_app(console.settings, console=console, tail=False)) as c:
        yield c


def test_without_a_key_an_api_client_gets_401_and_a_browser_the_login_form(client: TestClient) -> None:
    r = client.get("/api/board")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "ApiKey"
    r = client.get("/orders/A-1", headers={"accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=/orders/A-1"
    assert client.get("/health").status_code == 200  # probes stay open


def test_login_sets_a_strict_http_only_cookie_and_redirects_only_within_the_site(client: TestClient) -> None:
    r = client.post("/login", data={"key": KEY, "next": "//evil.example/x"}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert KEY.lower() not in cookie  # a session id, not the key
    assert client.get("/api/board").status_code == 200  # the cookie is enough


def test_bad_input_gets_a_precise_4xx(client: TestClient) -> None:
    h = {"X-API-Key": KEY}
    r = client.get("/orders/not an id!", headers=h)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["path", "order_id"]
    r = client.post("/dead-letters/redrive", data={"ids": ["order.events:0:1"]}, headers=h)
    assert r.status_code == 422
    assert "TOPIC.dlq:PARTITION:OFFSET" in r.json()["detail"]
    assert client.post("/dead-letters/purge", data={}, headers=h).status_code == 422
    assert client.get("/dead-letters", params={"error": "Bad1"}, headers=h).status_code == 422
    r = client.get("/orders/NEVER-SEEN", headers=h)
    assert r.status_code == 404
    assert "NEVER-SEEN" in r.json()["detail"]


def test_the_board_shows_what_the_fold_holds(client: TestClient, console: Console) -> None:
    for i, (topic, event_type) in enumerate(
        [(topics.STOREFRONT_ORDERS, "OrderPlaced"), (topics.ORDER_EVENTS, "OrderAccepted")]
    ):
        data = {"event_type": event_type, "order_id": "B-1"}
        console.fold.apply(topic=topic, partition=0, offset=i, timestamp=1.0, key="B-1", data=data)
    board = client.get("/api/board", headers={"X-API-Key": KEY}).json()
    assert board["in_flight"] == 1
    assert board["stages"]["ACCEPTED"] == 1
    assert board["stuck"] == 1  # started at t=1 s: long ago
    assert board["recent"][0]["order_id"] == "B-1"
    page = client.get("/board/fragment", headers={"X-API-Key": KEY}).text
    assert 'data-order="B-1"' in page
    assert "drawCharts(" in page


def test_the_board_shows_deliveries_and_delivery_times_with_the_other_kpis(
    client: TestClient, console: Console
) -> None:
    now = datetime.now(UTC)
    delivered = {
        "event_type": "ShipmentTracked",
        "order_id": "K-1",
        "carrier": "SF Express",
        "milestone": "DELIVERED",
        "at": (now - timedelta(minutes=10)).isoformat(),
    }
    console.kpis.add(
        topics.STOREFRONT_ORDERS, {"event_type": "OrderPlaced", "order_id": "K-1"}, now - timedelta(hours=3, minutes=10)
    )
    console.kpis.add(topics.SHIPPING_EVENTS, delivered, now - timedelta(minutes=5))
    console.kpis.add(topics.SHIPPING_EVENTS, delivered, now - timedelta(minutes=4))  # delivered twice
    console.kpis.refresh(now)

    tiles = {t["id"]: t["value"] for t in client.get("/api/board", headers={"X-API-Key": KEY}).json()["kpi"]}
    assert (tiles["kpi-delivered"], tiles["kpi-delivery-p50"], tiles["kpi-delivery-p95"]) == ("1", "3.0 h", "3.0 h")
    page = client.get("/board/fragment", headers={"X-API-Key": KEY}).text
    assert 'id="kpi-delivery-p95"' in page
    assert [span(x) for x in (None, 59.94, 300, 3 * 86400)] == ["-", "59.9 s", "5.0 min", "3.0 d"]


def test_the_order_page_shows_the_parcel_escaping_the_carriers_words(
    client: TestClient, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = [
        (topics.ORDER_EVENTS, {"event_type": "OrderCompleted", "order_id": "P-1"}),
        (topics.SHIPPING_EVENTS, {"event_type": "ShipmentScheduled", "order_id": "P-1", "tracking_number": "SF9"}),
        (
            topics.SHIPPING_EVENTS,
            {
                "event_type": "ShipmentTracked",
                "order_id": "P-1",
                "carrier": "SF Express",
                "tracking_number": "SF9",
                "milestone": "DELIVERED",
                "at": "2026-11-26T01:30:00Z",
                "location": "深圳 <b>南山</b>",
                "description": "<script>alert(1)</script> signed",
            },
        ),
        (
            topics.SHIPPING_EVENTS,
            {
                "event_type": "ShipmentTracked",
                "order_id": "P-1",
                "carrier": "SF Express",
                "milestone": "PICKED_UP",
                "at": "2026-11-25T09:00:00Z",
            },
        ),
    ]
    records = [
        topic_log.Rec(topic, 0, i, 1_764_000_000_000 + i, "P-1", json.dumps(value).encode())
        for i, (topic, value) in enumerate(values)
    ]
    for r in records:
        console.fold.apply(
            topic=r.topic, partition=0, offset=r.offset, timestamp=r.timestamp / 1000, key="P-1", data=r.json()
        )

    async def read_positions(_: Any, positions: list[int]) -> list[topic_log.Rec]:
        assert len(positions) == len(records)
        return records

    monkeypatch.setattr(console_state, "read_positions", read_positions)

    page = client.get("/orders/P-1/fragment", headers={"X-API-Key": KEY}).text
    assert re.search(r'id="parcel-status"[^>]*>DELIVERED<', page)
    steps = page[page.index('id="parcel-steps"') :]
    assert steps.index('data-milestone="PICKED_UP"') < steps.index('data-milestone="DELIVERED"')
    assert "2026-11-26 01:30:00" in steps
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; signed" in page
    assert "深圳 &lt;b&gt;南山&lt;/b&gt;" in page
    view = client.get("/api/orders/P-1", headers={"X-API-Key": KEY}).json()
    assert view["parcel"]["status"] == "DELIVERED"
    assert view["parcel"]["delivered_at"] == "2026-11-26T01:30:00Z"
