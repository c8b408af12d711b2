"""Event contracts, one module per producing service, and the decoder every consumer uses."""

from __future__ import annotations

import json
from typing import Annotated, Any, get_args

from pydantic import Field, TypeAdapter, ValidationError

from shared import topics
from shared.events.base import Event
from shared.events.inventory import InventoryEvent
from shared.events.notify import NotifyEvent
from shared.events.order import OrderEvent
from shared.events.payment import NotificationEvent, PaymentEvent
from shared.events.shipping import ShippingEvent
from shared.events.storefront import StorefrontEvent

EVENTS_BY_TOPIC: dict[str, Any] = {
    topics.STOREFRONT_ORDERS: StorefrontEvent,
    topics.ORDER_EVENTS: OrderEvent,
    topics.PAYMENT_EVENTS: PaymentEvent,
    topics.INVENTORY_EVENTS: InventoryEvent,
    topics.SHIPPING_EVENTS: ShippingEvent,
    topics.NOTIFY_EVENTS: NotifyEvent,
    topics.PAYMENT_NOTIFICATIONS: NotificationEvent,
}


def event_models(union: Any) -> tuple[Any, ...]:
    """The event models of a topic's union (a topic with one event type has the model itself)."""
    return get_args(union) or (union,)


_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    topic: TypeAdapter(Annotated[union, Field(discriminator="event_type")])  # type: ignore[arg-type]
    if len(event_models(union)) > 1
    else TypeAdapter(union)
    for topic, union in EVENTS_BY_TOPIC.items()
}


class UndecodableMessage(Exception):
    """A record that can never be processed as it is: not JSON, unknown type, or failing its schema."""

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        order_id: str | None = None,
        event_type: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.order_id = order_id
        self.event_type = event_type
        self.errors = errors or []
        self.data = data or {}


def known_event_types(topic: str) -> set[str]:
    return {m.model_fields["event_type"].default for m in event_models(EVENTS_BY_TOPIC[topic])}


def parse_json(value: bytes | None) -> dict[str, Any]:
    """Bytes to a JSON object, or UndecodableMessage saying precisely why not."""
    if value is None:
        raise UndecodableMessage("EmptyValue", "record has no value")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UndecodableMessage("NotUtf8", f"value is not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UndecodableMessage("InvalidJson", f"{e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise UndecodableMessage("InvalidJson", f"value is a JSON {type(data).__name__}, not an object")
    return data


def decode(topic: str, value: bytes | None) -> Event:
    """Decode one record of ``topic`` into its event model."""
    data = parse_json(value)
    order_id = data.get("order_id") if isinstance(data.get("order_id"), str) else None
    event_type = data.get("event_type")
    if event_type not in known_event_types(topic):
        raise UndecodableMessage(
            "UnknownEventType",
            f"event_type {event_type!r} is not one of {sorted(known_event_types(topic))}",
            order_id=order_id,
        )
    try:
        event: Event = _ADAPTERS[topic].validate_python(data)
    except ValidationError as e:
        raise UndecodableMessage(
            "SchemaViolation",
            describe_errors(e),
            order_id=order_id,
            event_type=event_type,
            errors=[
                {"loc": _loc(err["loc"], event_type), "msg": err["msg"], "type": err["type"]}
                for err in e.errors(include_input=False, include_url=False)
            ],
            data=data,
        ) from None
    return event


def _loc(loc: tuple[int | str, ...], tag: object) -> list[int | str]:
    # The discriminated union puts the event type first in every location; the field path is what users need.
    parts = list(loc)
    return parts[1:] if parts and parts[0] == tag else parts


def describe_errors(error: ValidationError) -> str:
    """A one-line reason naming each bad field; input values are left out (they may hold card numbers)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'][1:] or err['loc']) or '(root)'}: {err['msg']}"
        for err in error.errors(include_input=False, include_url=False)
    )


def encode(event: Event) -> bytes:
    return event.model_dump_json().encode("utf-8")
