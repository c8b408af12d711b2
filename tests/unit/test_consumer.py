"""The shared failure policy: undecodable records and permanent failures are dead-lettered at once, transient
failures are retried in place up to the limit, and outages are waited out. No broker, no store."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

from aiokafka.structs import ConsumerRecord
from faststream.kafka import KafkaBroker, TestKafkaBroker
from pymongo.errors import AutoReconnect

from shared import topics
from shared.consumer import Consumer, HandlerRegistry, PermanentError, TransientError
from shared.events.payment import PaymentAuthorized
from shared.service import Service
from shared.settings import ServiceSettings
from tests.unit.factories import ORDER_ID, DeadLetters, order_placed_data, payment_authorized_data, to_json

SETTINGS = ServiceSettings(
    service_name="payment",
    environment="test",
    retry_initial_delay_seconds=0.001,
    retry_max_delay_seconds=0.002,
    retry_max_attempts=3,
)
KEY = ORDER_ID.encode()


@dataclass
class Flaky:
    """A handler that raises the given errors in turn, then succeeds; it records every event it was given."""

    errors: list[Exception] = field(default_factory=list)
    always: Exception | None = None
    seen: list[Any] = field(default_factory=list)

    async def __call__(self, event: Any, deps: Any) -> None:
        self.seen.append(event)
        if self.always is not None:
            raise self.always
        if self.errors:
            raise self.errors.pop(0)


def record(
    topic: str, value: bytes | None, *, offset: int = 41, headers: list[tuple[str, bytes]] | None = None
) -> ConsumerRecord[bytes, bytes]:
    """A record as aiokafka hands it over (partition 2, a fixed timestamp)."""
    size = len(value or b"")
    return ConsumerRecord(topic, 2, offset, 1_764_057_600_000, 0, KEY, value, None, len(KEY), size, headers or [])


def consumer_for(handler: Flaky) -> tuple[Consumer, DeadLetters]:
    registry = HandlerRegistry()
    registry.on(PaymentAuthorized)(handler)
    dead = DeadLetters()
    return Consumer(settings=SETTINGS, group="payment", registry=registry, deps=None, publish_raw=dead), dead


def payment_record() -> ConsumerRecord[bytes, bytes]:
    return record(topics.PAYMENT_EVENTS, to_json(payment_authorized_data()))


async def test_invalid_json_is_dead_lettered_once_with_its_origin_and_error_class() -> None:
    handler = Flaky()
    consumer, dead = consumer_for(handler)

    await consumer.handle(record(topics.STOREFRONT_ORDERS, b"{not json", offset=7, headers=[("trace", b"abc")]))

    assert handler.seen == []
    assert len(dead.calls) == 1
    topic, key, value, headers = dead.calls[0]
    assert (topic, key, value) == ("storefront.orders.dlq", KEY, b"{not json")
    assert headers["x-dlq-original-topic"] == "storefront.orders"
    assert headers["x-dlq-original-partition"] == "2"
    assert headers["x-dlq-original-offset"] == "7"
    assert headers["x-dlq-error-class"] == "InvalidJson"
    assert headers["x-dlq-attempts"] == "1"
    assert headers["x-dlq-service"] == "payment"
    assert headers["x-dlq-group"] == "payment"
    assert headers["trace"] == "abc"  # the record's own headers travel with it


async def test_schema_violation_without_an_invalid_handler_is_dead_lettered() -> None:
    handler = Flaky()
    consumer, dead = consumer_for(handler)

    await consumer.handle(record(topics.PAYMENT_EVENTS, to_json(payment_authorized_data(amount=1.0))))

    assert handler.seen == []
    assert [(c[0], c[3]["x-dlq-error-class"]) for c in dead.calls] == [("payment.events.dlq", "SchemaViolation")]


async def test_event_type_without_a_handler_is_skipped_without_dead_lettering() -> None:
    consumer, dead = consumer_for(Flaky())
    declined = payment_authorized_data(event_type="PaymentDeclined", reason="insufficient_funds")

    await consumer.handle(record(topics.PAYMENT_EVENTS, to_json(declined)))

    assert dead.calls == []


async def test_handler_receives_the_decoded_event() -> None:
    handler = Flaky()
    consumer, dead = consumer_for(handler)

    await consumer.handle(payment_record())

    assert dead.calls == []
    assert len(handler.seen) == 1
    assert isinstance(handler.seen[0], PaymentAuthorized)
    assert handler.seen[0].order_id == ORDER_ID


async def test_permanent_error_is_dead_lettered_once_without_retrying() -> None:
    handler = Flaky(always=PermanentError("cancellation for unknown order"))
    consumer, dead = consumer_for(handler)

    await consumer.handle(payment_record())

    assert len(handler.seen) == 1
    assert len(dead.calls) == 1
    topic, key, value, headers = dead.calls[0]
    assert (topic, key) == ("payment.events.dlq", KEY)
    assert json.loads(value)["event_type"] == "PaymentAuthorized"
    assert headers["x-dlq-error-class"] == "PermanentError"
    assert headers["x-dlq-attempts"] == "1"
    assert "unknown order" in headers["x-dlq-error-message"]


async def test_transient_error_twice_then_success_is_retried_in_place_and_not_dead_lettered() -> None:
    handler = Flaky(errors=[TransientError("gateway 503"), TransientError("gateway 503")])
    consumer, dead = consumer_for(handler)

    await consumer.handle(payment_record())

    assert len(handler.seen) == 3
    assert dead.calls == []


async def test_transient_error_every_time_is_dead_lettered_after_the_maximum_attempts() -> None:
    handler = Flaky(always=TransientError("gateway 503"))
    consumer, dead = consumer_for(handler)

    await consumer.handle(payment_record())

    assert len(handler.seen) == SETTINGS.retry_max_attempts
    assert len(dead.calls) == 1
    headers = dead.calls[0][3]
    assert headers["x-dlq-error-class"] == "TransientError"
    assert headers["x-dlq-attempts"] == str(SETTINGS.retry_max_attempts)


async def test_store_outage_is_waited_out_beyond_the_maximum_attempts() -> None:
    outages: list[Exception] = [AutoReconnect("store down") for _ in range(SETTINGS.retry_max_attempts + 2)]
    handler = Flaky(errors=outages)
    consumer, dead = consumer_for(handler)

    await consumer.handle(payment_record())

    assert len(handler.seen) == SETTINGS.retry_max_attempts + 3
    assert dead.calls == []


# --- through FastStream's in-memory broker -------------------------------------------------------------------


def wired(handler: Flaky) -> tuple[Service, DeadLetters]:
    """The production wiring (``Service.wire_consumer``) on an in-memory broker, dead letters recorded."""
    registry = HandlerRegistry()
    registry.on(PaymentAuthorized)(handler)
    service = Service(
        settings=SETTINGS,
        inputs=(topics.STOREFRONT_ORDERS, topics.PAYMENT_EVENTS),
        registry=registry,
        broker=KafkaBroker(),
        mongo=cast(Any, None),  # the consumer path never reaches the store
    )
    service.wire_consumer(deps=None)
    assert service.consumer is not None
    dead = DeadLetters()
    service.consumer.publish_raw = dead
    return service, dead


async def test_invalid_bytes_published_to_the_broker_reach_the_dead_letter_topic() -> None:
    service, dead = wired(Flaky())

    async with TestKafkaBroker(service.broker) as broker:
        await broker.publish(b"not json", topics.STOREFRONT_ORDERS, key=b"k")

    assert len(dead.calls) == 1
    topic, key, value, headers = dead.calls[0]
    assert (topic, key, value) == ("storefront.orders.dlq", b"k", b"not json")
    assert headers["x-dlq-original-topic"] == "storefront.orders"
    assert headers["x-dlq-error-class"] == "InvalidJson"


async def test_valid_event_published_to_the_broker_reaches_its_handler_decoded() -> None:
    handler = Flaky()
    service, dead = wired(handler)

    async with TestKafkaBroker(service.broker) as broker:
        await broker.publish(to_json(payment_authorized_data()), topics.PAYMENT_EVENTS, key=KEY)
        await broker.publish(to_json(order_placed_data()), topics.STOREFRONT_ORDERS, key=KEY)

    assert dead.calls == []
    assert [type(e) for e in handler.seen] == [PaymentAuthorized]
