"""`fulfil keys`, `fulfil forget` and `fulfil restore` on the real store: what they write to the audit log, that
forget finds orders by their versions, and that a restore re-applies the revocations and erasures made after the
backup from the store's tombstones, not from the local audit log.

The commands run as operators run them (typer's CliRunner), against scratch databases: the client the CLI gets
maps every service database (``fulfil_order``...) and the tombstones' to a scratch one, and refuses any other, so
nothing here can touch the local stack's data.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from typer.testing import CliRunner

from tests.conftest import Endpoints
from tests.unit.factories import ORDER_PLACED, order_accepted, order_placed
from tools.fulfil import cli, term
from tools.ops import audit, backup

pytestmark = pytest.mark.infra

SERVICE_DATABASES = (*backup.DATABASES, "fulfil_tombstones")
LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)


class Renamed:
    """A MongoClient whose service databases are scratch ones (any other name is refused)."""

    def __init__(self, client: MongoClient[dict[str, Any]], names: dict[str, str]) -> None:
        self.client = client
        self.names = names

    def _name(self, name: str) -> str:
        if name not in self.names:
            raise AssertionError(f"the test touched a database it does not map: {name}")
        return self.names[name]

    def __getitem__(self, name: str) -> Any:
        return self.client[self._name(name)]

    def get_database(self, name: str, **options: Any) -> Any:
        return self.client.get_database(self._name(name), **options)

    def drop_database(self, name: str) -> None:
        self.client.drop_database(self._name(name))


@pytest.fixture
def store(endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Renamed]:
    client: MongoClient[dict[str, Any]] = MongoClient(endpoints.mongodb_url, tz_aware=True)
    run = uuid.uuid4().hex[:8]
    renamed = Renamed(client, {name: f"it_tomb_{run}_{name.removeprefix('fulfil_')}" for name in SERVICE_DATABASES})
    monkeypatch.setattr(term, "mongo", lambda url=None: renamed)
    monkeypatch.setattr(audit, "AUDIT_LOG", tmp_path / "audit.log")
    monkeypatch.setenv("FULFIL_OPERATOR", "on-call-7")
    monkeypatch.setenv("MONGODB_URL", endpoints.mongodb_url)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", endpoints.kafka)
    monkeypatch.delenv("API_KEYS_DATABASE", raising=False)
    try:
        yield renamed
    finally:
        for scratch in renamed.names.values():
            client.drop_database(scratch)
        client.close()


def fulfil(*args: str) -> str:
    result = CliRunner().invoke(cli.app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def audit_entries() -> list[dict[str, Any]]:
    log = Path(audit.AUDIT_LOG)
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []


def version(order_id: str, v: int, state: dict[str, Any], outbox: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"_id": f"{order_id}@{v:012d}", "key": order_id, "v": v, "state": state, "outbox": outbox or []}


def add_order(store: Renamed, order_id: str, customer: str, *, statuses: list[str], head: int | None) -> None:
    """An order placed by ``customer`` whose versions go through ``statuses``, with its payment's token; its head
    copy is version ``head`` (None: no head, its every head write lost)."""
    placed = order_placed(order_id=order_id, customer={**ORDER_PLACED["customer"], "id": customer})
    accepted = {"event_type": "OrderAccepted", "value": order_accepted(placed).model_dump_json()}
    versions = []
    for v, status in enumerate(statuses, start=1):
        state: dict[str, Any] = {"order_id": order_id, "status": status, "history": []}
        if status != "PENDING":
            state["terminal_at"] = LONG_AGO.isoformat()
        versions.append(version(order_id, v, state, [accepted] if v == 1 else []))
    store["fulfil_order"]["orders_versions"].insert_many(versions)
    if head is not None:
        store["fulfil_order"]["orders"].insert_one({**versions[head - 1], "_id": order_id})
    token = {"token": placed.payment.token, "status": "CAPTURED"}
    store["fulfil_payment"]["payments_versions"].insert_one(version(order_id, 1, token))


def personal_data_of(store: Renamed, order_id: str) -> list[str]:
    """Where the order still holds its customer's personal data (collection@version)."""
    found = []
    for db, coll in (
        ("fulfil_order", "orders_versions"),
        ("fulfil_order", "orders"),
        ("fulfil_payment", "payments_versions"),
    ):
        for doc in store[db][coll].find({"key": order_id}):
            text = json.dumps(doc, default=str, ensure_ascii=False)
            if "xm@example.com" in text or "tok_visa_ok" in text or "王小明" in text:
                found.append(f"{coll}@{doc.get('v')}")
    return sorted(found)


# ------------------------------------------------------------------ forget finds orders by their versions


def test_forget_erases_orders_whose_head_is_behind_or_missing(store: Renamed) -> None:
    customer = f"c-{uuid.uuid4().hex[:6]}"
    # Completed at version 3, but the head write of version 3 was lost: the head still says PENDING.
    add_order(store, "ORD-BEHIND", customer, statuses=["PENDING", "PENDING", "COMPLETED"], head=2)
    # Cancelled, and no head was ever written (the process crashed before its head flush each time).
    add_order(store, "ORD-HEADLESS", customer, statuses=["PENDING", "CANCELLED"], head=None)
    # Really in flight: left for later.
    add_order(store, "ORD-OPEN", customer, statuses=["PENDING", "PENDING"], head=2)
    add_order(store, "ORD-OTHER", "c-someone-else", statuses=["PENDING", "COMPLETED"], head=2)

    out = json.loads(fulfil("forget", customer, "--yes", "--json"))

    assert out["orders"] == ["ORD-BEHIND", "ORD-HEADLESS"]
    assert list(out["skipped"]) == ["ORD-OPEN"]
    assert personal_data_of(store, "ORD-BEHIND") == []
    assert personal_data_of(store, "ORD-HEADLESS") == []
    assert personal_data_of(store, "ORD-OPEN") != []
    assert personal_data_of(store, "ORD-OTHER") != []
    [entry] = [e for e in audit_entries() if e["action"] == "forget"]
    assert entry["customer_id"] == customer
    assert entry["orders"] == ["ORD-BEHIND", "ORD-HEADLESS"]


# ------------------------------------------------------------------ keys: audit lines


def test_keys_create_and_revoke_write_who_what_when_to_the_audit_log_never_the_key(store: Renamed) -> None:
    created = json.loads(fulfil("keys", "create", "--storefront", "shop-audit", "--yes", "--json"))
    tombstones = store["fulfil_tombstones"]["tombstones"]
    old = {"_id": "forget:c-old", "kind": "forget", "customer_id": "c-old", "at": datetime.now(UTC) - timedelta(days=9)}
    tombstones.insert_one(old)
    fulfil("keys", "revoke", created["key_id"], "--yes")

    [tomb] = list(tombstones.find())  # the revocation's; one older than any restorable backup is dropped
    assert (tomb["_id"], tomb["kind"], tomb["storefront_id"]) == (f"revoke:{created['key_id']}", "revoke", "shop-audit")

    entries = [e for e in audit_entries() if e["action"].startswith("keys")]
    assert [e["action"] for e in entries] == ["keys create", "keys revoke"]
    for entry in entries:
        assert entry["key_id"] == created["key_id"]
        assert entry["storefront"] == "shop-audit"
        assert entry["role"] == "storefront"
        assert entry["user"] == "on-call-7"
        assert datetime.fromisoformat(entry["at"]) > datetime.now(UTC) - timedelta(minutes=1)
    text = Path(audit.AUDIT_LOG).read_text(encoding="utf-8")
    stored = store["fulfil_order"]["api_keys"].find_one({"key_id": created["key_id"]})
    assert stored is not None
    assert created["token"] not in text
    assert stored["_id"] not in text  # nor its hash
    assert created["token"] not in json.dumps(tomb, default=str)
    assert stored["_id"] not in json.dumps(tomb, default=str)


# ------------------------------------------------------------------ restore re-applies revocations and erasures


async def _no_offsets(*_: Any) -> tuple[list[Any], list[str]]:
    return [], []


async def _no_members(*_: Any) -> dict[str, list[str]]:
    return {}


async def _nothing(*_: Any) -> None:
    return None


def test_restore_re_applies_revocations_and_erasures_made_after_the_backup(
    store: Renamed, endpoints: Endpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    customer = f"c-{uuid.uuid4().hex[:6]}"
    add_order(store, "ORD-DONE", customer, statuses=["PENDING", "COMPLETED"], head=2)
    kept = json.loads(fulfil("keys", "create", "--storefront", "shop-kept", "--yes", "--json"))
    leaked = json.loads(fulfil("keys", "create", "--storefront", "shop-leaked", "--yes", "--json"))
    archive = tmp_path / "before.tar.gz"
    backup.take_backup(client=store, mongodb_url=endpoints.mongodb_url, kafka=endpoints.kafka, out=archive)

    # After the backup: a leaked key is revoked and the customer asks to be forgotten.
    fulfil("keys", "revoke", leaked["key_id"], "--yes")
    fulfil("forget", customer, "--yes")
    assert personal_data_of(store, "ORD-DONE") == []
    # The restore runs where the audit log is not (another host, or the file is gone): only the store remembers.
    Path(audit.AUDIT_LOG).unlink()
    monkeypatch.setattr(backup, "plan_offsets", _no_offsets)  # no consumer group to rewind in this test
    monkeypatch.setattr(backup, "live_members", _no_members)
    monkeypatch.setattr(backup, "set_offsets", _nothing)

    plan = json.loads(fulfil("restore", str(archive), "--dry-run", "--json"))
    fulfil("restore", str(archive), "--yes")

    keys = store["fulfil_order"]["api_keys"]
    assert keys.find_one({"key_id": leaked["key_id"]})["revoked_at"] is not None, "a restore brought a revoked key back"
    assert keys.find_one({"key_id": kept["key_id"]})["revoked_at"] is None
    assert personal_data_of(store, "ORD-DONE") == [], "a restore brought an erased customer back"
    assert plan["forgotten_since_backup"] == [customer]
    assert leaked["key_id"] in plan["revocations_to_reapply"]
    [done] = [e for e in audit_entries() if e["action"] == "restore"]
    assert done["revoked_again"] == [leaked["key_id"]]
    assert done["erased_again"][customer] > 0
