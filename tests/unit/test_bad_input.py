"""Hostile and broken input, table-driven, on both entry points: ``POST /orders`` and ``storefront.orders``.

Every case has one clear outcome on each path: an HTTP status (422 with field errors, 413, 202) and, on Kafka,
``ACCEPTED``, ``REJECTED`` (OrderRejected with field errors) or ``DLQ:<why>``. None is a 500 or a crash. The Kafka
path runs the order service's own consumer and handlers with a fake store; the HTTP path its own router with fakes.
``CASES`` is also what tests/e2e/test_bad_input.py sends to the running services.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, NotEnoughReplicasError
from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.order import domain
from services.order.api import install_validation_handler, order_router
from services.order.handlers import Deps, handlers
from shared import topics
from shared.consumer import Consumer, Outage
from shared.events.order import OrderAccepted, OrderRejected
from shared.keys import KeyGuard, KeyStore
from shared.mongo import Loaded
from shared.settings import ServiceSettings
from tests.unit.factories import order_placed_data

CARD = "4111111111111111"
Body = dict[str, Any]


def order(order_id: str) -> Body:
    """A valid POST /orders body (the sample order without the event envelope)."""
    body = order_placed_data(order_id=order_id)
    for envelope in ("event_type", "event_id", "occurred_at"):
        body.pop(envelope)
    return body


def change(path: str, value: Any) -> Callable[[str], Body]:
    """The valid order with one field (``customer.name``, ``lines.0.quantity``) set to ``value``."""

    def build(order_id: str) -> Body:
        body = order(order_id)
        target: Any = body
        *parents, last = path.split(".")
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
        return body

    return build


def drop(field: str) -> Callable[[str], Body]:
    def build(order_id: str) -> Body:
        body = order(order_id)
        body.pop(field)
        return body

    return build


def lines(n: int, **line: Any) -> Callable[[str], Body]:
    return change("lines", [{"sku": "SKU-RED-MUG", "quantity": 1, "unit_price": "1.00", **line} for _ in range(n)])


def raw(data: bytes) -> Callable[[str], bytes]:
    return lambda _: data


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[str], Body | bytes]
    http: int | None  # POST /orders status (None: the case exists only on Kafka)
    kafka: str  # ACCEPTED | REJECTED | DLQ:<error class>
    loc: tuple[str | int, ...] | None = None  # the field the errors name (HTTP: under "body"; Kafka: the same path)


CASES: list[Case] = [
    # malformed input
    Case("malformed JSON", raw(b'{"order_id": "X", '), 422, "DLQ:InvalidJson"),
    Case("JSON array, not an object", raw(b"[1, 2, 3]"), 422, "DLQ:InvalidJson"),
    Case("not UTF-8", raw(b"\xff\xfe\x00{"), 422, "DLQ:NotUtf8"),
    Case("empty value", raw(b""), 422, "DLQ:InvalidJson"),
    Case("unknown event_type", change("event_type", "OrderTeleported"), None, "DLQ:UnknownEventType"),
    # wrong types, missing and extra fields
    Case("missing customer", drop("customer"), 422, "REJECTED", ("customer",)),
    Case("missing lines", drop("lines"), 422, "REJECTED", ("lines",)),
    Case("customer is null", change("customer", None), 422, "REJECTED", ("customer",)),
    Case("lines is a string", change("lines", "SKU-RED-MUG x2"), 422, "REJECTED", ("lines",)),
    Case("quantity as a string", change("lines.0.quantity", "2"), 422, "REJECTED", ("lines", 0, "quantity")),
    Case("quantity as a fraction", change("lines.0.quantity", 2.5), 422, "REJECTED", ("lines", 0, "quantity")),
    Case("quantity as a boolean", change("lines.0.quantity", True), 422, "REJECTED", ("lines", 0, "quantity")),
    Case("payment method unknown", change("payment.method", "bitcoin"), 422, "REJECTED", ("payment", "method")),
    Case("extra unknown field is ignored", change("gift_wrap", True), 202, "ACCEPTED"),
    Case("order_id too long", change("order_id", "X" * 65), 422, "DLQ:SchemaViolation", ("order_id",)),
    # quantities and lines
    Case("quantity zero", change("lines.0.quantity", 0), 422, "REJECTED", ("lines", 0, "quantity")),
    Case("quantity negative", change("lines.0.quantity", -3), 422, "REJECTED", ("lines", 0, "quantity")),
    Case("quantity huge", change("lines.0.quantity", 10**30), 422, "REJECTED", ("lines", 0, "quantity")),
    Case("101 lines", lines(101), 422, "REJECTED", ("lines",)),
    Case("no lines", change("lines", []), 422, "REJECTED", ("lines",)),
    # money
    Case("price with 3 decimals", change("lines.0.unit_price", "39.901"), 422, "REJECTED", ("lines", 0, "unit_price")),
    Case("price as a JSON float", change("lines.0.unit_price", 39.9), 422, "REJECTED", ("lines", 0, "unit_price")),
    Case("price 1E+999999", change("lines.0.unit_price", "1E+999999"), 422, "REJECTED", ("lines", 0, "unit_price")),
    Case("price 1E+30", change("lines.0.unit_price", "1E+30"), 422, "REJECTED", ("lines", 0, "unit_price")),
    Case("price NaN", change("lines.0.unit_price", "NaN"), 422, "REJECTED", ("lines", 0, "unit_price")),
    Case("price 1_000", change("lines.0.unit_price", "1_000"), 422, "REJECTED", ("lines", 0, "unit_price")),
    Case("price zero", change("lines.0.unit_price", "0.00"), 422, "REJECTED", ("lines", 0, "unit_price")),
    Case("price negative", change("lines.0.unit_price", "-5.00"), 422, "REJECTED", ("lines", 0, "unit_price")),
    Case(
        "price beyond 1,000,000",
        change("lines.0.unit_price", "1000000.01"),
        422,
        "REJECTED",
        ("lines", 0, "unit_price"),
    ),
    Case("order total beyond 10,000,000", lines(20, quantity=1000, unit_price="999999.00"), 422, "REJECTED", ()),
    Case("unknown currency XYZ", change("currency", "XYZ"), 422, "REJECTED", ("currency",)),
    Case("lowercase currency", change("currency", "cny"), 422, "REJECTED", ("currency",)),
    # strings
    Case("empty name", change("customer.name", ""), 422, "REJECTED", ("customer", "name")),
    Case("blank name", change("customer.name", "   "), 422, "REJECTED", ("customer", "name")),
    Case("1 MB name", change("customer.name", "x" * 1_000_000), 413, "REJECTED", ()),
    Case("300 KB unknown field", change("padding", "p" * 300_000), 413, "REJECTED", ()),
    Case("NUL in name", change("customer.name", "Xiao\x00Ming"), 422, "REJECTED", ("customer", "name")),
    Case(
        "ANSI escape in city",
        change("shipping.address.city", "\x1b[31mBJ"),
        422,
        "REJECTED",
        ("shipping", "address", "city"),
    ),
    Case(
        "RTL override in recipient",
        change("shipping.address.recipient", "abc\u202egnp.exe"),
        422,
        "REJECTED",
        ("shipping", "address", "recipient"),
    ),
    Case(
        "RTL mark in line1",
        change("shipping.address.line1", "1 Main St\u200f"),
        422,
        "REJECTED",
        ("shipping", "address", "line1"),
    ),
    Case("mixed scripts are fine", change("customer.name", "王小明 Smith Иван"), 202, "ACCEPTED"),
    Case("emoji are fine", change("customer.name", "小明 🎉🚀"), 202, "ACCEPTED"),
    Case("right-to-left script is fine", change("customer.name", "محمد علي"), 202, "ACCEPTED"),
    # MongoDB operators
    Case("order_id is {$gt: ''}", change("order_id", {"$gt": ""}), 422, "DLQ:SchemaViolation", ("order_id",)),
    Case("customer.id is {$gt: ''}", change("customer.id", {"$gt": ""}), 422, "REJECTED", ("customer", "id")),
    Case("customer.id is $where", change("customer.id", "$where"), 422, "REJECTED", ("customer", "id")),
    Case("sku is $ne", change("lines.0.sku", "$ne"), 422, "REJECTED", ("lines", 0, "sku")),
    Case("$where in a name is just text", change("customer.name", "$where: sleep(1000)"), 202, "ACCEPTED"),
    # card numbers, anywhere, any separator
    Case("card as token with dots", change("payment.token", "4111.1111.1111.1111"), 422, "REJECTED", ("payment",)),
    Case("card as token, no separator", change("payment.token", CARD), 422, "REJECTED", ("payment",)),
    Case(
        "card with spaces in name",
        change("customer.name", "Ming 4111 1111 1111 1111"),
        422,
        "REJECTED",
        ("customer", "name"),
    ),
    Case(
        "card with dashes in line1",
        change("shipping.address.line1", "4111-1111-1111-1111"),
        422,
        "REJECTED",
        ("shipping", "address", "line1"),
    ),
    Case(
        "Amex in line2",
        change("shipping.address.line2", "3782 822463 10005"),
        422,
        "REJECTED",
        ("shipping", "address", "line2"),
    ),
    Case("card as phone", change("customer.phone", CARD), 422, "REJECTED", ("customer", "phone")),
    Case("card in an unknown field", change("note", "pay with 4111 1111 1111 1111"), 422, "REJECTED", ()),
    Case("card as the order_id", change("order_id", "4111-1111-1111-1111"), 422, "DLQ:PermanentError", ("order_id",)),
    Case("a phone number is not a card", change("customer.phone", "+86 138 0000 0000"), 202, "ACCEPTED"),
    # other shapes
    Case("email without @", change("customer.email", "xm.example.com"), 422, "REJECTED", ("customer", "email")),
    Case("phone with letters", change("customer.phone", "call me"), 422, "REJECTED", ("customer", "phone")),
    Case("scheduled without a date", change("shipping.option", "scheduled"), 422, "REJECTED", ("shipping",)),
]


def test_the_table_has_at_least_40_cases_with_distinct_names() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


# --- the Kafka path: the order service's consumer and handlers, with a fake store ---------------------------


class FakeOrders:
    """Stands in for the store's unit of work: runs the step on a new document and keeps the decision."""

    def __init__(self) -> None:
        self.emitted: list[Any] = []
        self.states: list[domain.Order] = []

    async def handle(self, cause: Any, step: Any) -> Loaded[domain.Order]:
        state, emitted = await step(Loaded(order_id=cause.order_id, state=None))
        self.states.append(state)
        self.emitted += list(emitted)
        return Loaded(order_id=cause.order_id, state=state, version=1)


def envelope(body: Body | bytes, order_id: str) -> bytes:
    if isinstance(body, bytes):
        return body
    data = {"event_type": "OrderPlaced", "event_id": str(uuid.uuid4()), "occurred_at": "2026-11-25T08:00:00Z", **body}
    return json.dumps(data, ensure_ascii=False).encode()


async def kafka_outcome(value: bytes, key: str) -> tuple[str, list[Any], FakeOrders]:
    orders = FakeOrders()
    dead: list[dict[str, str]] = []

    async def dead_letter(topic: str, k: bytes | None, v: bytes, headers: dict[str, str]) -> None:
        dead.append(headers)

    deps = Deps(orders=orders, store=None, timers=None, backlog=None, deadline=timedelta(minutes=5))  # type: ignore[arg-type]
    consumer = Consumer(
        settings=ServiceSettings(service_name="order", otel_sdk_disabled=True, retry_max_attempts=1),
        group="order",
        registry=handlers,
        deps=deps,
        publish_raw=dead_letter,
    )
    record = ConsumerRecord(topics.STOREFRONT_ORDERS, 0, 7, 0, 0, key.encode(), value, None, len(key), len(value), [])
    await consumer.handle(record)
    if dead:
        return f"DLQ:{dead[0]['x-dlq-error-class']}", [], orders
    kinds = {type(e) for e in orders.emitted}
    if kinds == {OrderAccepted}:
        return "ACCEPTED", [], orders
    if kinds == {OrderRejected}:
        return "REJECTED", [e.loc for e in orders.emitted[0].errors], orders
    return f"unexpected: {kinds}", [], orders


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_kafka_path_gives_each_bad_order_its_clear_outcome(case: Case) -> None:
    order_id = "BAD-" + uuid.uuid4().hex[:8]
    value = envelope(case.build(order_id), order_id)

    outcome, locs, orders = await kafka_outcome(value, order_id)

    assert outcome == case.kafka
    if outcome == "REJECTED":
        assert orders.states[0].status == "REJECTED"
        assert orders.states[0].errors, "a rejection says which fields were wrong"
        if case.loc:
            assert list(case.loc) in [list(loc) for loc in locs]
        assert CARD not in json.dumps([e.model_dump() for e in orders.states[0].errors])


async def test_a_valid_order_right_after_the_bad_ones_is_accepted() -> None:
    for case in CASES:
        await kafka_outcome(envelope(case.build("BAD-1"), "BAD-1"), "BAD-1")

    outcome, _, orders = await kafka_outcome(envelope(order("GOOD-1"), "GOOD-1"), "GOOD-1")

    assert outcome == "ACCEPTED"
    assert orders.states[0].status == "PENDING"


# --- the HTTP path: the order router behind the key guard, with a fake store and producer --------------------


class FakeStore:
    def __init__(self) -> None:
        self.orders: dict[str, domain.Order] = {}

    async def read(self, *, order_id: str) -> Loaded[domain.Order]:
        return Loaded(order_id=order_id, state=self.orders.get(order_id))

    async def not_terminal(self, *, placed_before: Any, limit: int = 500) -> list[domain.Order]:
        return [o for o in self.orders.values() if o.status == "PENDING"][:limit]

    async def latest_matching(self, query: dict[str, Any], *, sort: str | None = None, limit: int = 200) -> list[Any]:
        wanted = query.get("state.storefront_id")
        return [
            Loaded(order_id=o.order_id, state=o)
            for o in self.orders.values()
            if o.status == "PENDING" and o.storefront_id == wanted
        ][:limit]


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send_and_wait(self, topic: str, value: bytes, **_: Any) -> None:
        self.sent.append((topic, value))


class FakeService:
    """The runtime's guarded send, over a fake producer; ``refuse`` makes it fail as Kafka can."""

    def __init__(self) -> None:
        self.producer = FakeProducer()
        self.refuse: Exception | None = None

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Any) -> None:
        if self.refuse is not None:
            raise self.refuse
        await self.producer.send_and_wait(topic, value, key=key, headers=headers)


class FakeKeys:
    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs = docs
        self.lookups = 0

    async def find_one(self, query: Any, /) -> dict[str, Any] | None:
        self.lookups += 1
        return self.docs.get(query["_id"])


def order_app(
    *, static: frozenset[str] = frozenset(), keys: FakeKeys | None = None, required: bool = False
) -> tuple[TestClient, FakeStore, FakeService]:
    store, service = FakeStore(), FakeService()
    app = FastAPI()
    app.include_router(order_router(service, store))  # type: ignore[arg-type]
    install_validation_handler(app)
    app.add_middleware(
        KeyGuard,
        keys=KeyStore(static_keys=static, lookup=keys, ttl=10),
        required=required,
        max_body_bytes=256 * 1024,
        open_paths=frozenset({"/health"}),
    )
    return TestClient(app, raise_server_exceptions=False), store, service


@pytest.fixture(scope="module")
def http() -> tuple[TestClient, FakeStore, FakeService]:
    return order_app()


@pytest.mark.parametrize("case", [c for c in CASES if c.http is not None], ids=lambda c: c.name)
def test_http_path_gives_each_bad_order_its_clear_status(
    case: Case, http: tuple[TestClient, FakeStore, FakeService]
) -> None:
    client, _, service = http
    order_id = "BAD-" + uuid.uuid4().hex[:8]
    body = case.build(order_id)
    sent_before = len(service.producer.sent)

    r = client.post(
        "/orders",
        content=body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode(),
        headers={"content-type": "application/json"},
    )

    assert r.status_code == case.http, r.text[:300]
    assert CARD not in r.text
    assert "4111.1111" not in r.text
    assert "4111-1111" not in r.text
    if case.http == 422:
        assert len(service.producer.sent) == sent_before, "nothing invalid reaches Kafka"
        if case.loc:
            assert ["body", *case.loc] in [e["loc"] for e in r.json()["detail"]]
    if case.http == 202:
        published = json.loads(service.producer.sent[-1][1])
        assert published["order_id"] == order_id
        assert "gift_wrap" not in published, "unknown fields are not passed on"


def test_a_body_over_256_kb_is_refused_from_its_length_before_it_is_read() -> None:
    client, _, service = order_app()

    r = client.post("/orders", content=b"{" + b" " * 300_000, headers={"content-type": "application/json"})

    assert r.status_code == 413
    assert service.producer.sent == []


def test_a_chunked_body_over_256_kb_is_cut_off_with_413() -> None:
    client, _, _ = order_app()

    def chunks() -> Any:
        for _ in range(40):
            yield b" " * 10_000

    r = client.post("/orders", content=chunks(), headers={"content-type": "application/json"})

    assert r.status_code == 413


# --- cancel and stock ------------------------------------------------------------------------------------------


def known(store: FakeStore, order_id: str, storefront_id: str | None = None) -> None:
    store.orders[order_id] = domain.Order(
        order_id=order_id, placed_at="2026-11-25T08:00:00Z", storefront_id=storefront_id
    )


CANCEL_CASES = [
    ("reason of 201 characters", {"reason": "r" * 201}, 422),
    ("blank reason", {"reason": "   "}, 422),
    ("reason as a number", {"reason": 42}, 422),
    ("unknown field", {"reason": "changed my mind", "refund_to": "x"}, 422),
    ("control character in reason", {"reason": "bye\x07"}, 422),
    ("card number in reason", {"reason": "refund 4111 1111 1111 1111"}, 422),
    ("malformed JSON", b'{"reason": ', 422),
    ("a fine reason", {"reason": "bought the wrong size 🙈"}, 202),
    ("no body at all", None, 202),
]


@pytest.mark.parametrize(("name", "body", "status"), CANCEL_CASES, ids=[c[0] for c in CANCEL_CASES])
def test_cancel_endpoint_answers_bad_bodies_with_422_never_500(name: str, body: Any, status: int) -> None:
    client, store, service = order_app()
    known(store, "SHOP1-1")
    kwargs: dict[str, Any] = {}
    if isinstance(body, bytes):
        kwargs = {"content": body, "headers": {"content-type": "application/json"}}
    elif body is not None:
        kwargs = {"json": body}

    r = client.post("/orders/SHOP1-1/cancel", **kwargs)

    assert r.status_code == status, r.text
    assert len(service.producer.sent) == (1 if status == 202 else 0)


@pytest.mark.parametrize(
    "refusal",
    [KafkaTimeoutError(), NotEnoughReplicasError(), Outage("Kafka producer replaced after OutOfOrderSequenceNumber")],
    ids=["timeout", "not_enough_replicas", "producer_replaced"],
)
def test_a_placement_kafka_did_not_take_is_503_with_retry_after_and_the_same_request_later_is_the_order(
    refusal: Exception,
) -> None:
    client, _, service = order_app()
    service.refuse = refusal
    headers = {"Idempotency-Key": "checkout-77"}

    r = client.post("/orders", json=order("SHOP1-77"), headers=headers)

    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "2"
    assert "send it again" in r.json()["detail"]
    assert service.producer.sent == []
    service.refuse = None
    assert client.post("/orders", json=order("SHOP1-77"), headers=headers).status_code == 202
    assert len(service.producer.sent) == 1


def test_cancel_for_an_unknown_order_is_404() -> None:
    client, _, service = order_app()

    assert client.post("/orders/NOPE-1/cancel").status_code == 404
    assert service.producer.sent == []


@pytest.mark.parametrize("path", ["/orders/%7B%22$gt%22:%22%22%7D", "/orders/$where", "/orders/a%00b"])
def test_operators_and_control_characters_in_an_order_path_are_422(path: str) -> None:
    client, _, _ = order_app()

    assert client.get(path).status_code == 422


def test_a_known_order_id_with_different_content_is_409() -> None:
    client, store, service = order_app()
    store.orders["SHOP1-9"] = domain.Order(
        order_id="SHOP1-9", placed_at="2026-11-25T08:00:00Z", content_hash="something else"
    )

    r = client.post("/orders", json=order("SHOP1-9"))

    assert r.status_code == 409
    assert service.producer.sent == []


@pytest.mark.parametrize("order_id", ["CHAOS20261125-8642-00008", "PQ1795647339-00005", "SHOP1-4111111111111111X"])
def test_an_identifier_whose_digits_happen_to_pass_luhn_is_not_taken_for_a_card_number(order_id: str) -> None:
    # One random numeric id in ten passes Luhn: a digit run glued to letters is part of an id, not a card.
    from shared.events.storefront import contains_card_number

    assert not contains_card_number(order_id)


@pytest.mark.parametrize("text", ["4111111111111111", "4111-1111-1111-1111", "card 4111 1111 1111 1111 thanks"])
def test_a_card_number_standing_on_its_own_is_still_found(text: str) -> None:
    from shared.events.storefront import contains_card_number

    assert contains_card_number(text)
