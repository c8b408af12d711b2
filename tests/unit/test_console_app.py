"""The console's HTTP surface in-process (no Kafka: the fold is fed by hand): keys, bad input, the board."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from shared import topics
from tools.console.app import Console, create_app
from tools.console.settings import ConsoleSettings

KEY = "unit-test-operator-key-0123"


@pytest.fixture
def console() -> Console:
    return Console(ConsoleSettings(api_keys=SecretStr(KEY)))


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
