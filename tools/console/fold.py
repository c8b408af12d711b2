"""The console's in-memory view of the saga, folded from the topics' records (pure: no I/O).

Every count the board shows is kept up to date as records arrive, so drawing the board never walks the orders:
stage counters move on each transition, in-flight orders sit in a list sorted by start time (the stuck ones are a
prefix of it), completions are counted per minute. Per order only its state and the Kafka positions of its records
are kept (8 bytes a record), so 100,000 orders fit in a few tens of MB and the order page reads its records back
from Kafka by position (:func:`parcel_view` draws its parcel from them).
"""

from __future__ import annotations

from array import array
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sortedcontainers import SortedKeyList

from shared import topics

# In-flight stages in saga order; a record never moves an order back (topics are read in parallel at startup).
STAGES = ("PLACED", "ACCEPTED", "PAYMENT_AUTHORIZED", "STOCK_RESERVED", "SHIPMENT_SCHEDULED")
TERMINAL = ("COMPLETED", "CANCELLED", "REJECTED")
STAGE_OF_EVENT = {
    "OrderPlaced": "PLACED",
    "OrderAccepted": "ACCEPTED",
    "PaymentAuthorized": "PAYMENT_AUTHORIZED",
    "StockReserved": "STOCK_RESERVED",
    "ShipmentScheduled": "SHIPMENT_SCHEDULED",
    "OrderCompleted": "COMPLETED",
    "OrderCancelled": "CANCELLED",
    "OrderRejected": "REJECTED",
}
RANK = {name: i for i, name in enumerate(STAGES + TERMINAL)}
# The one move out of a terminal stage: a customer may cancel a completed order until its parcel is delivered (it is
# called back or intercepted, and refunded). Both are on order.events, keyed by order: the cancellation is read after.
REOPENED = {("COMPLETED", "CANCELLED")}
MILESTONES = ("PICKED_UP", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED", "EXCEPTION")
TOPIC_INDEX = {name: i for i, name in enumerate(topics.ALL_TOPICS)}
_PARTITION_BITS, _OFFSET_BITS = 12, 47


def encode_position(topic: str, partition: int, offset: int) -> int:
    """(topic, partition, offset) packed in one signed 64-bit integer."""
    return (TOPIC_INDEX[topic] << (_PARTITION_BITS + _OFFSET_BITS)) | (partition << _OFFSET_BITS) | offset


def decode_position(code: int) -> tuple[str, int, int]:
    topic = topics.ALL_TOPICS[code >> (_PARTITION_BITS + _OFFSET_BITS)]
    return topic, (code >> _OFFSET_BITS) & ((1 << _PARTITION_BITS) - 1), code & ((1 << _OFFSET_BITS) - 1)


def trace_id_of(headers: dict[str, str]) -> str | None:
    """The trace id of a W3C ``traceparent`` header (``00-<trace>-<span>-<flags>``)."""
    parts = headers.get("traceparent", "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


class OrderState:
    """What the board needs of one order; positions of its records for the order page."""

    __slots__ = ("completed_at", "last_at", "order_id", "positions", "reason", "stage", "started_at", "trace_id")

    def __init__(self, order_id: str, at: float) -> None:
        self.order_id = order_id
        self.stage = ""  # "" until a stage-moving record arrives
        self.reason: str | None = None
        self.started_at = at
        self.last_at = at
        self.completed_at: float | None = None
        self.trace_id: str | None = None
        self.positions = array("q")

    @property
    def terminal(self) -> bool:
        return self.stage in TERMINAL


def transition(stage: str, event_type: str | None) -> str:
    """The stage after ``event_type``: forward only, and a terminal stage stays (but a completed order may be
    cancelled: :data:`REOPENED`)."""
    new = STAGE_OF_EVENT.get(event_type or "")
    if new is None:
        return stage
    if stage in TERMINAL:
        return new if (stage, new) in REOPENED else stage
    if new in TERMINAL or not stage or RANK[new] > RANK[stage]:
        return new
    return stage


@dataclass
class SagaFold:
    """Orders per stage, in flight, stuck, throughput and dead letters, folded record by record."""

    orders: dict[str, OrderState] = field(default_factory=dict)
    stage_counts: Counter[str] = field(default_factory=Counter)
    completed_per_minute: Counter[int] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)  # seen on each .dlq topic (purged ones included)
    records: int = 0
    undecodable: int = 0
    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)  # orders last moved, newest last
    recent_size: int = 50
    in_flight: SortedKeyList = field(default_factory=lambda: SortedKeyList(key=lambda o: (o.started_at, o.order_id)))

    def apply(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        timestamp: float,
        key: str | None,
        data: dict[str, Any] | None,
        headers: dict[str, str] | None = None,
    ) -> OrderState | None:
        """Fold one record (``timestamp`` in seconds); returns the order it belongs to, if any."""
        self.records += 1
        if topic.endswith(topics.DLQ_SUFFIX):
            self.dead_lettered[topic] += 1
        if data is None:
            self.undecodable += 1
        order_id = key or (data or {}).get("order_id")
        if not isinstance(order_id, str) or not order_id:
            return None
        order = self.orders.get(order_id)
        if order is None:
            order = self.orders[order_id] = OrderState(order_id, timestamp)
        elif timestamp < order.started_at and order.stage and not order.terminal:
            # An earlier record read late (another partition): the order started earlier than we thought.
            self.in_flight.remove(order)
            order.started_at = timestamp
            self.in_flight.add(order)
        else:
            order.started_at = min(order.started_at, timestamp)
        order.last_at = max(order.last_at, timestamp)
        if topic in TOPIC_INDEX:
            order.positions.append(encode_position(topic, partition, offset))
        if headers and order.trace_id is None and topic == topics.ORDER_EVENTS:
            order.trace_id = trace_id_of(headers)
        if data is not None and not topic.endswith(topics.DLQ_SUFFIX):
            self._move(order, data, timestamp)
        self.recent[order_id] = None
        self.recent.move_to_end(order_id)
        if len(self.recent) > self.recent_size:
            self.recent.popitem(last=False)
        return order

    def _move(self, order: OrderState, data: dict[str, Any], timestamp: float) -> None:
        event_type = data.get("event_type")
        new = transition(order.stage, event_type if isinstance(event_type, str) else None)
        if new == order.stage:
            return
        was_in_flight = bool(order.stage) and not order.terminal
        if order.stage:
            self.stage_counts[order.stage] -= 1
        self.stage_counts[new] += 1
        order.stage = new
        if new in TERMINAL:
            if was_in_flight:
                self.in_flight.remove(order)
            reason = data.get("reason")
            order.reason = reason if isinstance(reason, str) else None
            if new == "COMPLETED":
                order.completed_at = timestamp
                self.completed_per_minute[int(timestamp // 60)] += 1
        elif not was_in_flight:
            self.in_flight.add(order)

    def stuck(self, *, now: float, older_than: float) -> int:
        """How many orders are in flight longer than ``older_than`` seconds (a bisection, not a walk)."""
        cutoff = now - older_than
        return int(self.in_flight.bisect_key_left((cutoff, "")))

    def oldest_in_flight(self, limit: int) -> list[OrderState]:
        return list(self.in_flight.islice(0, limit))

    def throughput(self, *, now: float, minutes: int) -> list[tuple[int, int]]:
        """(minute start in epoch seconds, orders completed in it) for the last ``minutes`` minutes."""
        last = int(now // 60)
        return [(m * 60, self.completed_per_minute.get(m, 0)) for m in range(last - minutes + 1, last + 1)]


def status_history(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stages an order went through, with when and which event moved it, from its timeline (sorted by time)."""
    stage, out = "", []
    for e in events:
        if e.get("dead_letter"):
            continue
        new = transition(stage, e.get("event_type"))
        if new != stage:
            out.append({"stage": new, "at": e["at"], "event_type": e["event_type"], "topic": e["topic"]})
            stage = new
    return out


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at.astimezone(UTC) if at.tzinfo is not None else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parcel_view(records: Iterable[tuple[str, dict[str, Any] | None]]) -> dict[str, Any] | None:
    """The order's parcel from its ``(topic, value)`` records, as the order service shows it (``delivery``): the
    carrier's steps by the carrier's time (out of order and repeated as they may come: each step once), and the
    status -- ``INTERCEPTED`` once intercepted, else ``DELIVERED`` once any step says so, else the latest step's
    milestone; ``None`` while booked with no step yet. ``None`` for an order never booked. Texts are the carrier's:
    the page escapes them."""
    booked = called_back = False
    carrier = tracking_number = intercepted = ""
    steps: dict[tuple[str, datetime, str, str], dict[str, Any]] = {}
    for topic, data in records:
        if topic != topics.SHIPPING_EVENTS or data is None:
            continue  # a dead letter, or another topic's record
        event_type = data.get("event_type")
        if event_type not in ("ShipmentScheduled", "ShipmentTracked", "ShipmentIntercepted", "ShipmentCancelled"):
            continue
        booked = True
        carrier = _text(data.get("carrier")) or carrier
        tracking_number = _text(data.get("tracking_number")) or tracking_number
        if event_type == "ShipmentIntercepted":
            intercepted = _text(data.get("reason")) or "intercepted"
        elif event_type == "ShipmentCancelled":
            called_back = True
        elif event_type == "ShipmentTracked":
            milestone, at = data.get("milestone"), _aware(data.get("at"))
            if milestone not in MILESTONES or at is None:
                continue
            location, description = _text(data.get("location")), _text(data.get("description"))
            steps[(milestone, at, location, description)] = {
                "milestone": milestone,
                "at": at.isoformat(timespec="seconds").replace("+00:00", "Z"),
                "location": location,
                "description": description,
            }
    if not booked:
        return None
    ordered = [steps[k] for k in sorted(steps, key=lambda k: (k[1], MILESTONES.index(k[0]), k[2], k[3]))]
    delivered = [k[1] for k in steps if k[0] == "DELIVERED"]
    status = (
        "INTERCEPTED" if intercepted else "DELIVERED" if delivered else (ordered[-1]["milestone"] if ordered else None)
    )
    return {
        "status": status,
        "carrier": carrier,
        "tracking_number": tracking_number,
        "delivered_at": min(delivered).isoformat(timespec="seconds").replace("+00:00", "Z") if delivered else None,
        "intercepted": intercepted or None,
        "called_back": called_back,
        "steps": ordered,
    }
