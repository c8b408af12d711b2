"""Console logins are sessions: the cookie is no key, logout and revocation end it, forms carry a CSRF token, and
/metrics (GMV, revenue) is read with a key or the scrape-only token. In-process, the store in memory."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from shared.fakes import InMemoryDatabase
from shared.keys import COLLECTION as KEYS
from shared.keys import KeyStore, hash_token, key_document, new_token
from tools.console.app import create_app
from tools.console.sessions import COLLECTION as SESSIONS
from tools.console.sessions import Sessions
from tools.console.settings import ConsoleSettings
from tools.console.state import COOKIE, Console
from tools.ops import topic_log

KEY = "unit-test-operator-key-0123"
SCRAPE = "scrape-only-token-4567"
BAD_IDS = {"ids": ["not-a-record"]}  # passes the CSRF check only to be refused as a bad id (422)


@pytest.fixture
def db() -> InMemoryDatabase:
    return InMemoryDatabase()


@pytest.fixture
def console(db: InMemoryDatabase) -> Console:
    settings = ConsoleSettings(api_keys=SecretStr(KEY), metrics_token=SecretStr(SCRAPE))
    console = Console(settings, sessions=Sessions(db[SESSIONS]))
    console.keys = KeyStore(static_keys=frozenset({KEY}), lookup=db[KEYS], ttl=0)  # issued keys: in memory too
    return console


def client_of(console: Console, **kwargs: Any) -> TestClient:
    return TestClient(create_app(console.settings, console=console, tail=False), **kwargs)


@pytest.fixture
def client(console: Console) -> Iterator[TestClient]:
    with client_of(console) as c:
        yield c


def log_in(client: TestClient, key: str = KEY) -> str:
    r = client.post("/login", data={"key": key}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return str(client.cookies[COOKIE])


def the_csrf(db: InMemoryDatabase) -> str:
    [doc] = db[SESSIONS].docs.values()
    return str(doc["csrf"])


def test_the_cookie_is_a_session_the_store_keeps_hashed_and_no_key_anywhere(
    client: TestClient, db: InMemoryDatabase
) -> None:
    session = log_in(client)

    assert KEY not in session
    [doc] = db[SESSIONS].docs.values()
    assert doc["_id"] == hash_token(session)  # the id itself is not stored
    assert doc["key"] == hash_token(KEY)
    assert doc["expires_at"] > datetime.now(UTC) + timedelta(hours=11)
    assert client.get("/api/board").status_code == 200
    client.cookies.clear()
    assert client.get("/api/board", headers={"X-API-Key": session}).status_code == 401  # not an API key


def test_logout_ends_the_session_for_every_copy_of_the_cookie(client: TestClient, db: InMemoryDatabase) -> None:
    session = log_in(client)

    r = client.post("/logout", follow_redirects=False)

    assert r.status_code == 303
    assert db[SESSIONS].docs == {}
    client.cookies.set(COOKIE, session)  # a copy taken before the logout
    assert client.get("/api/board").status_code == 401


def test_a_form_that_changes_something_needs_the_sessions_csrf_token(
    client: TestClient, db: InMemoryDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_in(client)
    csrf = the_csrf(db)

    assert client.post("/dead-letters/redrive", data=BAD_IDS).status_code == 403  # as a forged form would
    assert client.post("/dead-letters/redrive", data={**BAD_IDS, "csrf": "guessed"}).status_code == 403
    assert client.post("/dead-letters/redrive", data={**BAD_IDS, "csrf": csrf}).status_code == 422
    assert client.post("/dead-letters/purge", data=BAD_IDS, headers={"X-CSRF-Token": csrf}).status_code == 422

    async def no_letters(*_: Any, **__: Any) -> list[Any]:
        return []

    monkeypatch.setattr(topic_log, "dead_letters", no_letters)
    page = client.get("/dead-letters").text
    assert re.search(rf'name="csrf" value="{re.escape(csrf)}"', page)  # the page's form carries it


def test_an_api_client_with_a_key_needs_no_csrf_token(client: TestClient) -> None:
    r = client.post("/dead-letters/redrive", data=BAD_IDS, headers={"X-API-Key": KEY})
    assert r.status_code == 422


def test_a_revoked_key_ends_its_sessions(client: TestClient, db: InMemoryDatabase) -> None:
    token = new_token()
    doc = key_document(token=token, storefront_id="ops", role="operator", created_by="test")
    db[KEYS].docs[doc["_id"]] = doc
    log_in(client, token)
    assert client.get("/api/board").status_code == 200

    db[KEYS].docs[doc["_id"]]["revoked_at"] = datetime.now(UTC)

    assert client.get("/api/board").status_code == 401


def test_a_storefront_key_opens_no_session(client: TestClient, db: InMemoryDatabase) -> None:
    token = new_token()
    doc = key_document(token=token, storefront_id="shop-a", role="storefront", created_by="test")
    db[KEYS].docs[doc["_id"]] = doc

    r = client.post("/login", data={"key": token}, follow_redirects=False)

    assert r.status_code == 403
    assert db[SESSIONS].docs == {}


def test_the_cookie_is_secure_over_https_and_where_settings_say_so(console: Console) -> None:
    with client_of(console) as plain:
        r = plain.post("/login", data={"key": KEY}, follow_redirects=False)
        assert "secure" not in r.headers["set-cookie"].lower()  # http://127.0.0.1 in development
    with client_of(console, base_url="https://console.example") as tls:
        r = tls.post("/login", data={"key": KEY}, follow_redirects=False)
        assert "; secure" in r.headers["set-cookie"].lower()
    behind_proxy = Console(console.settings.model_copy(update={"cookie_secure": True}), sessions=console.sessions)
    with client_of(behind_proxy) as proxied:
        r = proxied.post("/login", data={"key": KEY}, follow_redirects=False)
        assert "; secure" in r.headers["set-cookie"].lower()


async def test_an_expired_session_is_refused_and_removed(db: InMemoryDatabase) -> None:
    sessions = Sessions(db[SESSIONS], lifetime=timedelta(seconds=-1))
    token, _ = await sessions.open(hash_token(KEY))

    assert await sessions.find(token) is None
    assert db[SESSIONS].docs == {}


async def test_a_login_sweeps_the_sessions_that_expired(db: InMemoryDatabase) -> None:
    stale, _ = await Sessions(db[SESSIONS], lifetime=timedelta(seconds=-1)).open(hash_token(KEY))
    fresh, _ = await Sessions(db[SESSIONS]).open(hash_token(KEY))

    assert set(db[SESSIONS].docs) == {hash_token(fresh)}
    assert stale != fresh


def test_metrics_are_read_with_the_scrape_token_or_an_operator_key_only(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong-token-000000"}).status_code == 401

    scraped = client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE}"})
    assert scraped.status_code == 200
    assert "fulfil_kpi_" in scraped.text
    assert client.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200
    # the scrape token opens nothing else
    assert client.get("/api/board", headers={"Authorization": f"Bearer {SCRAPE}"}).status_code == 401
    assert client.get("/api/board", headers={"X-API-Key": SCRAPE}).status_code == 401
