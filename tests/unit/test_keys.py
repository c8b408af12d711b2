"""Storefront identity (API keys, ownership), safe operator tools and personal data, without servers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.inventory.api import stock_router
from services.order import domain
from shared import keys
from shared.events.storefront import OrderRequest
from shared.keys import KeyGuard, KeyStore
from shared.settings import ServiceSettings
from tests.unit.test_bad_input import FakeKeys, known, order, order_app
from tests.unit.test_production_settings import SECURE_TRANSPORTS
from tools.ops import audit, privacy, topic_config, topic_log

OPERATOR = "static-operator-key-0001"


def issued(storefront: str, role: keys.Role = "storefront", **extra: Any) -> tuple[str, dict[str, Any]]:
    token = keys.new_token()
    return token, {**keys.key_document(token=token, storefront_id=storefront, role=role, created_by="t"), **extra}


def store_of(*docs: dict[str, Any]) -> FakeKeys:
    return FakeKeys({d["_id"]: d for d in docs})


# --- keys: checked first, before the body ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("missing", None),
        ("wrong", b"not-a-key"),
        ("empty", b""),
        ("non-ASCII bytes", "clé-ümlaut".encode()),
        ("latin-1 bytes", b"\xe9\xff\xfe"),
        ("control character", b"key\x01key"),
        ("4 KB long", b"k" * 4096),
    ],
)
def test_a_missing_wrong_or_non_ascii_key_is_401_never_500(name: str, header: bytes | None) -> None:
    client, _, _ = order_app(static=frozenset({OPERATOR}), required=True)
    headers = {"X-API-Key": header} if header is not None else {}

    r = client.get("/orders/SHOP1-1", headers=headers)

    assert r.status_code == 401
    assert r.json() == {"detail": "missing or unknown X-API-Key"}


def test_the_key_is_checked_before_an_oversized_or_broken_body_is_read() -> None:
    client, _, service = order_app(static=frozenset({OPERATOR}), required=True)

    r = client.post("/orders", content=b"{not json" + b" " * 5_000_000, headers={"content-type": "application/json"})

    assert r.status_code == 401
    assert service.producer.sent == []


def test_a_static_operator_key_passes_and_sees_any_order() -> None:
    client, store, _ = order_app(static=frozenset({OPERATOR}), required=True)
    known(store, "SHOP1-1", storefront_id="shop-a")

    assert client.get("/orders/SHOP1-1", headers={"X-API-Key": OPERATOR}).status_code == 200


def test_without_keys_configured_a_request_without_a_key_is_let_through_but_a_wrong_key_is_not() -> None:
    client, store, _ = order_app()
    known(store, "SHOP1-1")

    assert client.get("/orders/SHOP1-1").status_code == 200
    assert client.get("/orders/SHOP1-1", headers={"X-API-Key": "guess"}).status_code == 401


# --- storefront keys: ownership ------------------------------------------------------------------------------


def test_a_storefront_sees_its_own_order_and_gets_404_for_another_storefronts() -> None:
    token_a, doc_a = issued("shop-a")
    client, store, _ = order_app(keys=store_of(doc_a), required=True)
    known(store, "A-1", storefront_id="shop-a")
    known(store, "B-1", storefront_id="shop-b")
    known(store, "K-1", storefront_id=None)  # from Kafka: no storefront

    assert client.get("/orders/A-1", headers={"X-API-Key": token_a}).status_code == 200
    assert client.get("/orders/B-1", headers={"X-API-Key": token_a}).status_code == 404
    assert client.get("/orders/K-1", headers={"X-API-Key": token_a}).status_code == 404
    assert client.post("/orders/B-1/cancel", headers={"X-API-Key": token_a}).status_code == 404


def test_a_storefronts_listing_holds_only_its_own_orders() -> None:
    token_a, doc_a = issued("shop-a")
    token_op, doc_op = issued("ops", role="operator")
    client, store, _ = order_app(keys=store_of(doc_a, doc_op), required=True)
    known(store, "A-1", storefront_id="shop-a")
    known(store, "B-1", storefront_id="shop-b")

    mine = client.get("/orders", params={"older_than_seconds": 0}, headers={"X-API-Key": token_a}).json()
    everything = client.get("/orders", params={"older_than_seconds": 0}, headers={"X-API-Key": token_op}).json()

    assert [o["order_id"] for o in mine["orders"]] == ["A-1"]
    assert sorted(o["order_id"] for o in everything["orders"]) == ["A-1", "B-1"]


def test_the_owner_of_a_placed_order_comes_from_the_key_not_the_body() -> None:
    token_a, doc_a = issued("shop-a")
    client, _, service = order_app(keys=store_of(doc_a), required=True)

    r = client.post("/orders", json=order("A-2") | {"storefront_id": "shop-b"}, headers={"X-API-Key": token_a})

    assert r.status_code == 202
    assert json.loads(service.producer.sent[-1][1])["storefront_id"] == "shop-a"


def test_another_storefront_placing_a_known_order_id_gets_409() -> None:
    token_b, doc_b = issued("shop-b")
    client, store, service = order_app(keys=store_of(doc_b), required=True)
    placed = OrderRequest.model_validate(order("A-3"))
    store.orders["A-3"] = domain.Order(
        order_id="A-3", placed_at="2026-11-25T08:00:00Z", content_hash=domain.content_hash(placed), storefront_id="a"
    )

    r = client.post("/orders", json=order("A-3"), headers={"X-API-Key": token_b})

    assert r.status_code == 409
    assert service.producer.sent == []


def test_a_revoked_key_is_refused() -> None:
    token, doc = issued("shop-a", revoked_at="2026-11-25T08:00:00Z")
    client, store, _ = order_app(keys=store_of(doc), required=True)
    known(store, "A-1", storefront_id="shop-a")

    assert client.get("/orders/A-1", headers={"X-API-Key": token}).status_code == 401


async def test_lookups_are_by_hash_and_cached_so_repeated_wrong_keys_cost_one_lookup() -> None:
    lookup = FakeKeys({})
    store = KeyStore(static_keys=frozenset(), lookup=lookup, ttl=60)

    for _ in range(5):
        assert await store.resolve(b"fk_wrong") is None

    assert lookup.lookups == 1


def test_a_key_document_holds_the_hash_and_never_the_token() -> None:
    token, doc = issued("shop-a")

    assert doc["_id"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in json.dumps(doc, default=str)
    assert token.startswith("fk_")
    assert len(token) >= 40


def stock_app(lookup: FakeKeys) -> TestClient:
    app = FastAPI()
    app.include_router(stock_router(None))  # type: ignore[arg-type]  # refused before the store is reached
    app.add_middleware(
        KeyGuard,
        keys=KeyStore(static_keys=frozenset(), lookup=lookup),
        required=True,
        max_body_bytes=262144,
        open_paths=frozenset(),
    )
    return TestClient(app, raise_server_exceptions=False)


STOCK_CASES = [
    ("negative", {"available": -1}, 422),
    ("both fields", {"available": 1, "on_hand": 2}, 422),
    ("neither field", {}, 422),
    ("a string", {"available": "5"}, 422),
    ("a float", {"available": 5.5}, 422),
    ("huge", {"on_hand": 10**12}, 422),
    ("unknown field", {"available": 5, "$set": {"available": 0}}, 422),
    ("operator in the value", {"available": {"$gt": 0}}, 422),
]


@pytest.mark.parametrize(("name", "body", "status"), STOCK_CASES, ids=[c[0] for c in STOCK_CASES])
def test_put_stock_answers_bad_bodies_with_422(name: str, body: Any, status: int) -> None:
    token, doc = issued("ops", role="operator")

    r = stock_app(store_of(doc)).put("/stock/SKU-RED-MUG", json=body, headers={"X-API-Key": token})

    assert r.status_code == status


@pytest.mark.parametrize("sku", ["$where", "SKU%00", "a" * 65])
def test_put_stock_refuses_operators_and_junk_in_the_sku(sku: str) -> None:
    token, doc = issued("ops", role="operator")

    r = stock_app(store_of(doc)).put(f"/stock/{sku}", json={"available": 1}, headers={"X-API-Key": token})

    assert r.status_code == 422


def test_put_stock_needs_an_operator_key() -> None:
    token, doc = issued("shop-a")

    r = stock_app(store_of(doc)).put("/stock/SKU-RED-MUG", json={"available": 0}, headers={"X-API-Key": token})

    assert r.status_code == 403


# --- settings and the production app -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", ",", " , ,", "short"])
def test_production_refuses_api_keys_that_configure_nothing_or_are_weak(value: str) -> None:
    with pytest.raises(ValueError, match="API_KEYS"):
        ServiceSettings(environment="production", kafka_security_protocol="SASL_SSL", api_keys=SecretStr(value))


def test_production_serves_no_docs_or_schema_but_keeps_probes_open() -> None:
    from services.inventory.app import Settings, create_app

    settings = Settings(
        environment="production",
        **SECURE_TRANSPORTS,
        api_keys=SecretStr(OPERATOR),
        otel_sdk_disabled=True,
    )
    client = TestClient(create_app(settings))

    assert client.get("/docs", headers={"X-API-Key": OPERATOR}).status_code == 404
    assert client.get("/openapi.json", headers={"X-API-Key": OPERATOR}).status_code == 404
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/health").status_code == 200


# --- topics apply: incremental, never less durable -----------------------------------------------------------


def test_topic_settings_the_file_does_not_name_are_kept() -> None:
    merged, notes = topic_config.merge_topic_config(
        {"retention.ms": "604800000", "max.message.bytes": "2000000"},
        {"max.message.bytes": "2000000"},
        {"retention.ms": "604800000", "cleanup.policy": "delete"},
    )

    assert merged == {"max.message.bytes": "2000000", "retention.ms": "604800000", "cleanup.policy": "delete"}
    assert notes == []


@pytest.mark.parametrize(
    ("name", "current", "declared"),
    [
        ("min.insync.replicas", "2", "1"),
        ("retention.ms", "2592000000", "604800000"),
        ("retention.ms", "-1", "604800000"),
        ("unclean.leader.election.enable", "false", "true"),
    ],
)
def test_durability_is_never_lowered(name: str, current: str, declared: str) -> None:
    merged, notes = topic_config.merge_topic_config({name: current}, {name: current}, {name: declared})

    assert merged[name] == current
    assert len(notes) == 1
    assert "never lowered" in notes[0]


def test_durability_may_be_raised() -> None:
    merged, notes = topic_config.merge_topic_config({"min.insync.replicas": "1"}, {}, {"min.insync.replicas": "2"})

    assert merged == {"min.insync.replicas": "2"}
    assert notes == []


# --- personal data ----------------------------------------------------------------------------------------------


def test_dlq_show_masks_personal_data_and_card_numbers_including_the_key() -> None:
    value = json.dumps(
        {
            "customer": {"id": "c-1", "name": "王小明", "email": "xm@example.com", "phone": "+8613812345678"},
            "shipping": {"address": {"recipient": "王小明", "line1": "中关村大街1号"}},
            "payment": {"token": "tok_secret"},
            "note": "card 4111.1111.1111.1111",
        },
        ensure_ascii=False,
    )
    full = {"order_id": "4111-1111-1111-1111", "value": value, "headers": {"x-dlq-error-class": "SchemaViolation"}}

    shown = topic_log.masked_dead_letter(full)

    text = json.dumps(shown, ensure_ascii=False)
    for secret in ("王小明", "xm@example.com", "13812345678", "tok_secret", "4111.1111", "4111-1111", "中关村"):
        assert secret not in text
    assert "x***@example.com" in text


def test_unmasking_is_written_to_the_audit_log(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"

    audit.write("dlq show --unmask", log, record="storefront.orders.dlq:0:1")

    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["action"] == "dlq show --unmask"
    assert entry["record"] == "storefront.orders.dlq:0:1"
    assert entry["user"]
    assert entry["at"]


def test_forget_erases_every_personal_field_and_keeps_documents_valid() -> None:
    from services.notify.domain import Contact
    from services.shipping.domain import Shipment
    from shared.events import decode
    from tests.unit.factories import order_accepted

    accepted = order_accepted()
    order_doc: dict[str, Any] = {
        "_id": "SHOP1-000123",
        "state": {"history": [{"event_type": "X", "detail": {"customer_reason": "call me on 138"}}]},
        "outbox": [{"event_type": "OrderAccepted", "value": accepted.model_dump_json()}],
    }
    shipment = {"state": Shipment(address=accepted.shipping.address).model_dump(mode="json")}
    mail = {"to": "xm@example.com", "subject": "s", "body": "Hello 王小明", "message_id": "<m>"}
    delivery = {"status": "SENT", "message_id": "<m>", "at": "2026-11-25T08:00:00Z", "mail": mail}
    contact = {"state": {"email": "xm@example.com", "name": "王小明", "deliveries": {"order_completed": delivery}}}

    erased_order = privacy.erase_document("orders", order_doc)
    erased_shipment = privacy.erase_document("shipments", shipment)
    erased_contact = privacy.erase_document("contacts", contact)

    text = json.dumps([erased_order, erased_shipment, erased_contact], ensure_ascii=False)
    for personal in ("王小明", "xm@example.com", "中关村", "tok_visa_ok", "call me", "+8613800000000", '"c-42"'):
        assert personal not in text
    assert order_doc["outbox"][0]["value"] == accepted.model_dump_json(), "the input is not changed in place"
    decode("order.events", erased_order["outbox"][0]["value"].encode())  # still a valid event
    Shipment.model_validate(erased_shipment["state"])
    assert Contact.model_validate(erased_contact["state"]).email == ""
