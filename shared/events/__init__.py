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
from shared.events.shipping import CarrierPushEvent, ShippingEvent
from shared.events.storefront import StorefrontEvent

EVENTS_BY_TOPIC: dict[str, Any] = {
    topics.STOREFRONT_ORDERS: StorefrontEvent,
    topics.ORDER_EVENTS: OrderEvent,
    topics.PAYMENT_EVENTS: PaymentEvent,
    topics.INVENTORY_EVENTS: InventoryEvent,
    topics.SHIPPING_EVENTS: ShippingEvent,
    topics.NOTIFY_EVENTS: NotifyEvent,
    topics.PAYMENT_NOTIFICATIONS: NotificationEvent,
    topics.SHIPPING_NOTIFICATIONS: CarrierPushEvent,
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
    """A record that can never be processed as it is: not JSON, unknown type, or failing its schema.

    ``kind`` names the class of failure (``x-dlq-error-class``): ``EmptyValue``, ``NotUtf8``, ``InvalidJson``,
    ``UnknownEventType``, ``SchemaViolation``, or -- when a validator broke on the input instead of refusing it --
    the name of the exception it raised (``RecursionError``, ``TypeError``...)."""

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
        super().__init__(f"{kind}: {printable(detail, MAX_DETAIL)}")
        self.kind = kind
        self.order_id = order_id
        self.event_type = event_type
        self.errors = errors or []
        self.data = data or {}


MAX_DETAIL = 2000  # a reason is read by people and travels in a header: a hostile record does not get to size it


def printable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters and made encodable as UTF-8 (a lone surrogate, which JSON can carry
    as ``\\ud800``, becomes its escape): safe for a Kafka header and for the JSON log line."""
    cut = text if len(text) <= limit else text[:limit] + "…"
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")


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
    except Exception as e:
        # Well-formed but refused by the decoder: nested deeper than its recursion limit (RecursionError), an
        # integer longer than Python converts (ValueError, 4300 digits)... Decoding is pure, so whatever it raises
        # is the record's doing, never an outage: it must not be retried.
        raise UndecodableMessage("InvalidJson", f"the JSON decoder refused it: {type(e).__name__}: {e}") from None
    if not isinstance(data, dict):
        raise UndecodableMessage("InvalidJson", f"value is a JSON {type(data).__name__}, not an object")
    return data


def decode(topic: str, value: bytes | None) -> Event:
    """Decode one record of ``topic`` into its event model; anything wrong with the record is UndecodableMessage.

    Nothing else escapes for a record's sake: a validator that breaks on hostile input (a RecursionError from a
    structure nested just below the decoder's limit, a TypeError from an unexpected type) is reported as
    UndecodableMessage of that exception's name, so the consumer dead-letters it instead of retrying it for ever.
    """
    adapter, known = _ADAPTERS[topic], known_event_types(topic)  # KeyError: a topic without a contract (our bug)
    data = parse_json(value)
    order_id = data.get("order_id") if isinstance(data.get("order_id"), str) else None
    event_type = data.get("event_type")
    if not isinstance(event_type, str) or event_type not in known:
        shown = repr(event_type[:100]) if isinstance(event_type, str) else f"a JSON {_json_type(event_type)}"
        raise UndecodableMessage(
            "UnknownEventType", f"event_type {shown} is not one of {sorted(known)}", order_id=order_id
        )
    try:
        event: Event = adapter.validate_python(data)
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
    except Exception as e:
        raise UndecodableMessage(
            type(e).__name__,
            f"validating {event_type} broke on the record: {type(e).__name__}: {e}",
            order_id=order_id,
            event_type=event_type,
        ) from None
    return event


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


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
