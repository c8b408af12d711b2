"""Sample events shared by the unit tests: one valid storefront order and the facts that follow it.

The order is built by ``tools.ops.samples``, as the benchmark's and the chaos drill's are.

Builders take keyword overrides so a test states only what matters to it; everything else is the sample below.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from shared import topics
from shared.events import decode
from shared.events.base import Event
from shared.events.inventory import StockLine, StockReserved, StockUnavailable
from shared.events.notify import NotificationSent
from shared.events.order import CancellationReason, OrderAccepted, OrderCancelled, OrderCompleted, ShipmentInfo
from shared.events.payment import PaymentAuthorized, PaymentCaptured, PaymentDeclined
from shared.events.shipping import Milestone, ShipmentFailed, ShipmentScheduled, ShipmentTracked
from shared.events.storefront import OrderCancellationRequested, OrderPlaced
from shared.mongo import ConcurrentUpdate, Loaded, next_inbox_outbox
from shared.outbox import OutboxRecord
from tools.ops import samples

S = TypeVar("S", bound=BaseModel)

ORDER_ID = "SHOP1-000123"
AT = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
TRACKING_NUMBER = "SF000000012345"

ORDER_PLACED: dict[str, Any] = samples.order_placed(
    samples.order_request(
        ORDER_ID,
        lines=[samples.order_line("SKU-RED-MUG", 2, "39.90")],
        customer_id="c-42",
        name="王小明",
        email="xm@example.com",
        phone="+8613800000000",
        token="tok_visa_ok",
        line1="中关村大街1号",
        city="北京",
    ),
    event_id="6f1c1b8e-8b0e-4c55-9f43-2b1b7a0c1d11",
    occurred_at="2026-11-25T08:00:00Z",
)


def order_placed_data(**overrides: Any) -> dict[str, Any]:
    """The sample OrderPlaced as a JSON object (a fresh deep copy), top-level keys replaced by ``overrides``."""
    data = copy.deepcopy(ORDER_PLACED)
    data.update(overrides)
    return data


def to_json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def order_placed(**overrides: Any) -> OrderPlaced:
    """The sample OrderPlaced decoded through the storefront contract, with top-level ``overrides``."""
    event = decode(topics.STOREFRONT_ORDERS, to_json(order_placed_data(**overrides)))
    assert isinstance(event, OrderPlaced)
    return event


def retry_of(event: OrderPlaced) -> OrderPlaced:
    """The same placement sent again by the storefront: same content, new event_id."""
    return event.model_copy(update={"event_id": uuid.uuid4()})


def order_accepted(placed: OrderPlaced | None = None) -> OrderAccepted:
    placed = placed or order_placed()
    accepted: OrderAccepted = OrderAccepted.caused_by(
        placed,
        customer=placed.customer,
        lines=placed.lines,
        total=Decimal("79.80"),
        currency=placed.currency,
        payment=placed.payment,
        shipping=placed.shipping,
    )
    return accepted


def cancellation_requested(reason: str = "customer_request") -> OrderCancellationRequested:
    return OrderCancellationRequested(event_id=uuid.uuid4(), order_id=ORDER_ID, occurred_at=AT, reason=reason)


def cause(event_type: str = "Test") -> Event:
    """A bare envelope to stand for whatever event a decision reacts to."""
    return Event(event_type=event_type, event_id=uuid.uuid4(), order_id=ORDER_ID, occurred_at=AT)


def payment_authorized(amount: str = "79.80") -> PaymentAuthorized:
    event: PaymentAuthorized = PaymentAuthorized.caused_by(
        cause(),
        amount=Decimal(amount),
        currency="CNY",
        authorization_id="auth-1",
    )
    return event


def payment_authorized_data(**overrides: Any) -> dict[str, Any]:
    """A valid ``payment.events`` PaymentAuthorized as a JSON object."""
    data: dict[str, Any] = {
        "event_type": "PaymentAuthorized",
        "event_id": str(uuid.uuid4()),
        "order_id": ORDER_ID,
        "occurred_at": "2026-11-25T08:00:01Z",
        "amount": "1.00",
        "currency": "CNY",
        "authorization_id": "auth-1",
    }
    data.update(overrides)
    return data


def payment_declined(reason: str = "insufficient_funds") -> PaymentDeclined:
    event: PaymentDeclined = PaymentDeclined.caused_by(cause(), reason=reason)
    return event


def payment_captured() -> PaymentCaptured:
    event: PaymentCaptured = PaymentCaptured.caused_by(
        cause(),
        amount=Decimal("79.80"),
        currency="CNY",
        capture_id="cap-1",
    )
    return event


def stock_reserved() -> StockReserved:
    event: StockReserved = StockReserved.caused_by(cause(), lines=[StockLine(sku="SKU-RED-MUG", quantity=2)])
    return event


def stock_unavailable() -> StockUnavailable:
    event: StockUnavailable = StockUnavailable.caused_by(cause(), skus=["SKU-RED-MUG"])
    return event


def shipment_scheduled(tracking_number: str = TRACKING_NUMBER) -> ShipmentScheduled:
    event: ShipmentScheduled = ShipmentScheduled.caused_by(
        cause(),
        carrier="SF Express",
        tracking_number=tracking_number,
        promised_date=date(2026, 11, 26),
    )
    return event


def shipment_tracked(milestone: Milestone, minutes: int, tracking_number: str = TRACKING_NUMBER) -> ShipmentTracked:
    """The carrier's step ``minutes`` after AT."""
    event: ShipmentTracked = ShipmentTracked.caused_by(
        cause(),
        carrier="SF Express",
        tracking_number=tracking_number,
        milestone=milestone,
        at=AT + timedelta(minutes=minutes),
        location="深圳",
        description=milestone.lower(),
    )
    return event


def shipment_failed() -> ShipmentFailed:
    event: ShipmentFailed = ShipmentFailed.caused_by(cause(), reason="shipping_failed: undeliverable")
    return event


def notification_sent() -> NotificationSent:
    event: NotificationSent = NotificationSent.caused_by(cause(), kind="order_cancelled", message_id="<m@x>")
    return event


def order_completed(tracking_number: str = TRACKING_NUMBER) -> OrderCompleted:
    shipment = ShipmentInfo(carrier="SF Express", tracking_number=tracking_number, promised_date=date(2026, 11, 26))
    event: OrderCompleted = OrderCompleted.caused_by(
        cause(),
        total=Decimal("79.80"),
        currency="CNY",
        shipment=shipment,
    )
    return event


def order_cancelled(reason: CancellationReason) -> OrderCancelled:
    event: OrderCancelled = OrderCancelled.caused_by(cause(), reason=reason)
    return event


@dataclass
class DeadLetters:
    """Stands in for the dead-letter publisher: records every call instead of writing to ``<topic>.dlq``."""

    calls: list[tuple[str, bytes | None, bytes, dict[str, str]]] = field(default_factory=list)

    async def __call__(self, topic: str, key: bytes | None, value: bytes, headers: dict[str, str]) -> None:
        self.calls.append((topic, key, value, headers))


class FakeAggregateStore(Generic[S]):
    """Stands in for ``shared.mongo.AggregateStore`` in memory: versioned documents with inbox and outbox.

    A save names the version it read; if the store holds a newer one, it raises ``ConcurrentUpdate`` as the real
    insert of an existing ``<key>@<version>`` does. Keys in ``unread`` exist but this process has not read them:
    ``load`` returns them *assumed* new (as the real store does for a key not in its cache) until ``confirm``.
    """

    def __init__(self) -> None:
        self.docs: dict[str, Loaded[S]] = {}
        self.unread: set[str] = set()
        self.saves: list[Loaded[S]] = []
        self.confirmed: list[str] = []
        self.acknowledged_ids: set[str] = set()
        self.cached: dict[str, Loaded[S]] = {}  # what this process last saw of a key, served until outdated()
        self.checked: list[str] = []

    def acknowledged(self, records: Sequence[OutboxRecord]) -> None:
        self.acknowledged_ids.update(r.event_id for r in records)

    def unacknowledged(self, loaded: Loaded[S]) -> list[OutboxRecord]:
        return [r for r in loaded.outbox if r.event_id not in self.acknowledged_ids]

    def rehead(self, *, order_id: str) -> None:
        """No head copies here: nothing to write again."""

    def put(self, order_id: str, state: S, *, outbox: Sequence[OutboxRecord] = (), inbox: Sequence[str] = ()) -> None:
        """A document as another process left it (a new version, outside any step)."""
        current = self.docs.get(order_id)
        version = current.version + 1 if current is not None else 1
        self.docs[order_id] = Loaded(order_id, state, version, list(inbox), list(outbox))

    async def load(self, *, order_id: str) -> Loaded[S]:
        doc = self.cached.get(order_id) or self.docs.get(order_id)
        if doc is None or order_id in self.unread:
            return Loaded(order_id=order_id, state=None, assumed=True)
        return Loaded(doc.order_id, doc.state, doc.version, list(doc.inbox), list(doc.outbox))

    async def outdated(self, loaded: Loaded[S]) -> bool:
        self.checked.append(loaded.order_id)
        current = self.docs.get(loaded.order_id)
        if current is None or current.version <= loaded.version:
            return False
        self.cached.pop(loaded.order_id, None)
        return True

    async def confirm(self, *, order_id: str) -> Loaded[S]:
        self.confirmed.append(order_id)
        self.unread.discard(order_id)
        return await self.load(order_id=order_id) if order_id in self.docs else Loaded(order_id=order_id, state=None)

    async def save(
        self,
        loaded: Loaded[S],
        *,
        state: S,
        emit: Sequence[OutboxRecord] = (),
        processed: object | None = None,
    ) -> Loaded[S]:
        current = self.docs.get(loaded.order_id)
        self.cached.pop(loaded.order_id, None)  # a save, or its failure, replaces what this process knew
        if (current.version if current is not None else 0) != loaded.version:
            self.unread.discard(loaded.order_id)  # the failed insert told us it exists
            raise ConcurrentUpdate(loaded.order_id)
        inbox, outbox = next_inbox_outbox(loaded, emit=emit, processed=processed, acknowledged=self.acknowledged_ids)
        saved = Loaded(loaded.order_id, state, loaded.version + 1, inbox, outbox)
        self.docs[loaded.order_id] = saved
        self.saves.append(saved)
        return Loaded(saved.order_id, saved.state, saved.version, list(inbox), list(outbox))


@dataclass
class Published:
    """Stands in for the Kafka publish of ``UnitOfWork``: records every batch it was given."""

    batches: list[list[OutboxRecord]] = field(default_factory=list)

    async def __call__(self, records: Sequence[OutboxRecord]) -> None:
        self.batches.append(list(records))

    @property
    def records(self) -> list[OutboxRecord]:
        return [r for batch in self.batches for r in batch]
