"""The shared failure policy: undecodable records and permanent failures are dead-lettered at once, transient
failures are retried in place up to the limit, and outages are waited out. Then the pipeline that feeds it:
per-key lanes, commits that never pass an unfinished record, rebalances, back-pressure. No broker, no store: the
Kafka consumer is a fake that hands out batches and records commits, pauses and resumes."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from pymongo.errors import AutoReconnect

from shared import topics
from shared.consumer import Consumer, HandlerRegistry, NotYet, Outage, PermanentError, Pipeline, TransientError
from shared.events.payment import PaymentAuthorized
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


async def test_an_outage_of_a_dependency_is_waited_out_beyond_the_maximum_attempts() -> None:
    handler = Flaky(errors=[Outage("SMTP server unreachable") for _ in range(SETTINGS.retry_max_attempts + 2)])
    consumer, dead = consumer_for(handler)

    await consumer.handle(payment_record())

    assert len(handler.seen) == SETTINGS.retry_max_attempts + 3
    assert dead.calls == []


async def test_store_outage_is_waited_out_beyond_the_maximum_attempts() -> None:
    outages: list[Exception] = [AutoReconnect("store down") for _ in range(SETTINGS.retry_max_attempts + 2)]
    handler = Flaky(errors=outages)
    consumer, dead = consumer_for(handler)

    await consumer.handle(payment_record())

    assert len(handler.seen) == SETTINGS.retry_max_attempts + 3
    assert dead.calls == []


# --- records of both input topics, as the pipeline hands them to Consumer.handle -------------------------------


async def test_invalid_bytes_on_an_input_topic_are_dead_lettered_under_the_record_key() -> None:
    handler = Flaky()
    consumer, dead = consumer_for(handler)
    raw = ConsumerRecord(topics.STOREFRONT_ORDERS, 0, 3, 0, 0, b"k", b"not json", None, 1, 8, [])

    await consumer.handle(raw)

    assert handler.seen == []
    assert len(dead.calls) == 1
    topic, key, value, headers = dead.calls[0]
    assert (topic, key, value) == ("storefront.orders.dlq", b"k", b"not json")
    assert headers["x-dlq-original-topic"] == "storefront.orders"
    assert headers["x-dlq-error-class"] == "InvalidJson"


async def test_of_the_records_of_two_input_topics_only_the_handled_type_reaches_its_handler_decoded() -> None:
    handler = Flaky()
    consumer, dead = consumer_for(handler)

    await consumer.handle(payment_record())
    await consumer.handle(record(topics.STOREFRONT_ORDERS, to_json(order_placed_data()), offset=42))

    assert dead.calls == []
    assert [type(e) for e in handler.seen] == [PaymentAuthorized]


# --- the pipeline ------------------------------------------------------------------------------------------------

P0 = TopicPartition(topics.PAYMENT_EVENTS, 0)
P1 = TopicPartition(topics.PAYMENT_EVENTS, 1)


class FakeKafka:
    """Stands in for ``AIOKafkaConsumer``: hands out the batches given to it, records commits, pauses, resumes."""

    def __init__(self, *assigned: TopicPartition) -> None:
        self.assigned = set(assigned)
        self.batches: deque[dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]] = deque()
        self.commits: list[dict[TopicPartition, int]] = []
        self.paused: set[TopicPartition] = set()

    async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        await asyncio.sleep(0.001)  # a poll with nothing new returns after a moment, as the real one does
        return self.batches.popleft() if self.batches else {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    @property
    def last_commit(self) -> dict[TopicPartition, int]:
        return self.commits[-1] if self.commits else {}


def rec(tp: TopicPartition, offset: int, key: str) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, key.encode(), b"{}", None, len(key), 2, [])


@dataclass
class Gated:
    """A record handler that waits at a gate for the offsets given one, and fails the first attempts of others."""

    gates: dict[tuple[int, int], asyncio.Event] = field(default_factory=dict)
    failures: dict[tuple[int, int], int] = field(default_factory=dict)
    started: list[tuple[str, int]] = field(default_factory=list)
    finished: list[tuple[str, int]] = field(default_factory=list)

    def gate(self, tp: TopicPartition, offset: int) -> asyncio.Event:
        return self.gates.setdefault((tp.partition, offset), asyncio.Event())

    async def __call__(self, record: ConsumerRecord[bytes, bytes]) -> None:
        where = ((record.key or b"").decode(), record.offset)
        self.started.append(where)
        if (gate := self.gates.get((record.partition, record.offset))) is not None:
            await gate.wait()
        if self.failures.get((record.partition, record.offset), 0) > 0:
            self.failures[(record.partition, record.offset)] -= 1
            raise RuntimeError("dead-letter topic unreachable")
        self.finished.append(where)


_sleep = asyncio.sleep  # the real one, should a test replace the pipeline's


async def settle() -> None:
    """Let every lane run as far as it can (no real I/O here: a few turns of the loop reach a steady state)."""
    for _ in range(20):
        await _sleep(0)


async def until(condition: Callable[[], bool], within: float = 2.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.001)


@pytest.fixture
def kafka() -> FakeKafka:
    return FakeKafka(P0, P1)


@dataclass
class Rig:
    kafka: FakeKafka
    handler: Gated
    pipeline: Pipeline

    def submit(self, *records: ConsumerRecord[bytes, bytes]) -> None:
        for r in records:
            self.pipeline._submit(TopicPartition(r.topic, r.partition), r)


@pytest.fixture
async def rig(kafka: FakeKafka) -> AsyncIterator[Rig]:
    handler = Gated()
    pipeline = Pipeline(cast(Any, kafka), handler, max_in_flight=100)
    await pipeline.on_partitions_assigned(kafka.assignment())
    yield Rig(kafka, handler, pipeline)
    for gate in handler.gates.values():
        gate.set()
    await pipeline.drain(grace=1.0)  # no lane outlives its test


async def test_records_of_one_key_are_handled_strictly_one_after_another(rig: Rig) -> None:
    slow = rig.handler.gate(P0, 0)
    rig.submit(rec(P0, 0, "A"), rec(P0, 1, "A"), rec(P0, 2, "A"))
    await settle()

    assert rig.handler.started == [("A", 0)]  # A@1 waits for A@0, though nothing else holds it up

    slow.set()
    await settle()

    assert rig.handler.finished == [("A", 0), ("A", 1), ("A", 2)]


async def test_a_slow_record_of_one_key_does_not_delay_other_keys(rig: Rig) -> None:
    slow = rig.handler.gate(P0, 0)
    rig.submit(rec(P0, 0, "A"), rec(P0, 1, "B"), rec(P1, 0, "C"), rec(P0, 2, "B"))
    await settle()

    assert sorted(rig.handler.finished) == [("B", 1), ("B", 2), ("C", 0)]
    assert rig.pipeline.in_flight == 1

    slow.set()
    await settle()

    assert rig.handler.finished[-1] == ("A", 0)
    assert rig.pipeline.in_flight == 0


async def test_the_committed_offset_never_passes_an_unfinished_record(rig: Rig) -> None:
    slow = rig.handler.gate(P0, 1)
    rig.submit(rec(P0, 0, "A"), rec(P0, 1, "B"), rec(P0, 2, "C"))
    await settle()
    assert ("C", 2) in rig.handler.finished

    await rig.pipeline._commit()
    assert rig.kafka.commits == [{P0: 1}]  # offset 2 is done, but 1 is not: a crash must redeliver 1

    await rig.pipeline._commit()
    assert rig.kafka.commits == [{P0: 1}]  # nothing new, nothing sent

    slow.set()
    await settle()
    await rig.pipeline._commit()

    assert rig.kafka.commits == [{P0: 1}, {P0: 3}]


async def test_each_partition_commits_its_own_finished_prefix(rig: Rig) -> None:
    rig.handler.gate(P0, 0)
    rig.submit(rec(P0, 0, "A"), rec(P0, 1, "B"), rec(P1, 5, "C"), rec(P1, 6, "D"))
    await settle()

    await rig.pipeline._commit()

    assert rig.kafka.commits == [{P1: 7}]  # P0 has nothing to commit while its first record is unfinished


async def test_finish_moves_the_commit_point_only_across_a_contiguous_done_prefix(rig: Rig) -> None:
    pipeline = rig.pipeline
    pipeline.outstanding[P0].extend([10, 11, 12, 13])

    pipeline._finish(P0, 12)
    pipeline._finish(P0, 11)
    assert P0 not in pipeline.commit_points

    pipeline._finish(P0, 10)
    assert pipeline.commit_points[P0] == 13
    assert list(pipeline.outstanding[P0]) == [13]


async def test_revocation_commits_the_finished_work_of_the_revoked_partitions_only(rig: Rig) -> None:
    rig.submit(rec(P0, 0, "A"), rec(P1, 0, "B"), rec(P1, 1, "C"))
    await settle()

    await rig.pipeline.on_partitions_revoked({P1})

    assert rig.kafka.commits == [{P1: 2}]  # handed over clean: the next owner starts after what was done


async def test_a_revoked_partition_is_never_committed_again_nor_its_late_records_handled(rig: Rig) -> None:
    rig.submit(rec(P1, 0, "B"))
    await settle()
    await rig.pipeline.on_partitions_revoked({P1})
    rig.kafka.commits.clear()

    rig.submit(rec(P1, 1, "C"), rec(P0, 0, "A"))  # P1@1 was fetched before the revocation
    await settle()
    await rig.pipeline._commit()

    assert ("C", 1) not in rig.handler.started
    assert rig.kafka.commits == [{P0: 1}]
    assert rig.pipeline.in_flight == 0


async def test_revocation_waits_for_the_work_in_hand_before_committing(rig: Rig) -> None:
    slow = rig.handler.gate(P1, 0)
    rig.submit(rec(P1, 0, "B"))
    await settle()

    revoking = asyncio.ensure_future(rig.pipeline.on_partitions_revoked({P1}))
    await settle()
    assert not revoking.done()

    slow.set()
    await asyncio.wait_for(revoking, timeout=2)

    assert rig.kafka.commits == [{P1: 1}]


async def test_queued_records_of_a_revoked_partition_are_dropped_not_handled(rig: Rig) -> None:
    slow = rig.handler.gate(P1, 0)
    pipeline = Pipeline(cast(Any, rig.kafka), rig.handler, max_in_flight=100, revoke_timeout=0.0)
    await pipeline.on_partitions_assigned({P1})
    for r in (rec(P1, 0, "B"), rec(P1, 1, "B")):
        pipeline._submit(P1, r)
    await settle()

    await pipeline.on_partitions_revoked({P1})  # gives up at once: B@0 is still being handled
    slow.set()
    await settle()

    assert rig.handler.finished == [
        ("B", 0)
    ]  # the one in hand ends; the one queued behind it is left to the next owner
    assert rig.kafka.commits == []
    assert pipeline.in_flight == 0
    await pipeline.drain(grace=1.0)


async def test_a_record_whose_handling_fails_is_retried_and_its_key_waits(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def no_wait(delay: float, *args: Any) -> None:
        waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", no_wait)  # the lane's back-off, without the wait
    rig.handler.failures[(P0.partition, 0)] = 2
    rig.submit(rec(P0, 0, "A"), rec(P0, 1, "A"))
    await settle()
    monkeypatch.undo()

    assert rig.handler.started == [("A", 0), ("A", 0), ("A", 0), ("A", 1)]  # never skipped, never overtaken
    assert rig.handler.finished == [("A", 0), ("A", 1)]
    assert waits == [0.2, 0.4]  # backing off between attempts
    await rig.pipeline._commit()
    assert rig.kafka.last_commit == {P0: 2}


async def test_run_fetches_handles_and_commits_what_is_done(kafka: FakeKafka) -> None:
    handler = Gated()
    pipeline = Pipeline(cast(Any, kafka), handler, max_in_flight=100, commit_interval=0.0)
    await pipeline.on_partitions_assigned(kafka.assignment())
    kafka.batches.append({P0: [rec(P0, 0, "A"), rec(P0, 1, "B")], P1: [rec(P1, 0, "A")]})
    running = asyncio.ensure_future(pipeline.run())
    try:
        await until(lambda: kafka.last_commit.get(P0) == 2 and kafka.last_commit.get(P1) == 1)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    assert sorted(handler.finished) == [("A", 0), ("A", 0), ("B", 1)]


async def test_fetching_pauses_while_too_many_records_are_in_flight_and_resumes_when_half_are_done(
    kafka: FakeKafka,
) -> None:
    handler = Gated()
    gates = [handler.gate(P0, offset) for offset in range(4)]
    pipeline = Pipeline(cast(Any, kafka), handler, max_in_flight=4, commit_interval=0.0)
    await pipeline.on_partitions_assigned(kafka.assignment())
    kafka.batches.append({P0: [rec(P0, offset, key) for offset, key in enumerate("ABCD")]})
    running = asyncio.ensure_future(pipeline.run())
    try:
        await until(lambda: kafka.paused == {P0, P1})

        for gate in gates[:2]:
            gate.set()
        await until(lambda: pipeline.in_flight == 2)
        await settle()
        assert kafka.paused == {P0, P1}  # half still held: not yet (no flapping at the threshold)

        gates[2].set()
        await until(lambda: not kafka.paused)
        assert pipeline.in_flight == 1
    finally:
        for gate in gates:
            gate.set()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await pipeline.drain(grace=1.0)


async def test_drain_lets_the_work_in_hand_finish_and_commits_it(kafka: FakeKafka) -> None:
    handler = Gated()
    slow = handler.gate(P0, 0)
    pipeline = Pipeline(cast(Any, kafka), handler, max_in_flight=100)
    await pipeline.on_partitions_assigned(kafka.assignment())
    pipeline._submit(P0, rec(P0, 0, "A"))
    await settle()

    draining = asyncio.ensure_future(pipeline.drain(grace=2.0))
    await settle()
    assert not draining.done()
    slow.set()
    await asyncio.wait_for(draining, timeout=2)

    assert kafka.commits == [{P0: 1}]


@dataclass
class Follower:
    """An order service in miniature: records of ``key`` other than the placement are NotYet until it is handled."""

    placement: tuple[int, int]  # (partition, offset) of the placement
    placed: bool = False
    calls: list[tuple[int, bool]] = field(default_factory=list)  # (offset, waited)

    async def __call__(self, record: ConsumerRecord[bytes, bytes], *, waited: bool = False) -> None:
        self.calls.append((record.offset, waited))
        if (record.partition, record.offset) == self.placement:
            self.placed = True
        elif not self.placed and not waited:
            raise NotYet("placement not seen yet")


async def test_an_event_before_its_placement_steps_aside_and_is_handled_after_it(kafka: FakeKafka) -> None:
    handler = Follower(placement=(P1.partition, 0))
    pipeline = Pipeline(cast(Any, kafka), handler, max_in_flight=100, wait_for_prior=60)
    await pipeline.on_partitions_assigned(kafka.assignment())

    pipeline._submit(P0, rec(P0, 0, "A"))  # e.g. PaymentAuthorized, read before the placement after a restore
    pipeline._submit(P0, rec(P0, 1, "A"))
    pipeline._submit(P1, rec(P1, 0, "A"))  # the placement, from another topic
    await until(lambda: pipeline.in_flight == 0)
    await pipeline._commit()

    assert handler.calls == [(0, False), (1, False), (0, False), (0, False), (1, False)]
    assert kafka.last_commit == {P0: 2, P1: 1}  # both done, none dead-lettered (waited=True never needed)


async def test_an_event_whose_placement_never_comes_is_given_up_after_the_wait(kafka: FakeKafka) -> None:
    handler = Follower(placement=(P1.partition, 99))
    pipeline = Pipeline(cast(Any, kafka), handler, max_in_flight=100, wait_for_prior=0.3)
    await pipeline.on_partitions_assigned(kafka.assignment())

    pipeline._submit(P0, rec(P0, 0, "A"))
    await until(lambda: pipeline.in_flight == 0, within=5)

    assert handler.calls[0] == (0, False)
    assert handler.calls[-1] == (0, True)  # handed over as waited: the consumer dead-letters it with its reason
    assert all(not waited for _, waited in handler.calls[:-1])
