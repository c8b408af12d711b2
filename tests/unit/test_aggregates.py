"""The unit of work every handler goes through (``shared.unit_of_work.UnitOfWork``): inbox, decision, versioned write,
publish, and the side effects a decision leaves pending. No store, no broker: an in-memory versioned store and a
recording publisher stand in for them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

import pytest
from pydantic import BaseModel

from shared.consumer import NotYet, PermanentError
from shared.events.base import EmittedEvent, Event
from shared.fakes import InMemoryBroker, InMemoryDatabase
from shared.mongo import AggregateStore, Loaded
from shared.outbox import OutboxRecord
from shared.unit_of_work import UnitOfWork
from tests.unit.factories import (
    ORDER_ID,
    FakeAggregateStore,
    Published,
    cause,
    payment_authorized,
    payment_captured,
)

OUT = "test.events"


class Box(BaseModel):
    """A service's state in miniature: a call it may intend (CALLING), and what it was told."""

    status: Literal["NEW", "CALLING", "DONE", "CANCELLED"] = "NEW"
    notes: list[str] = []
    answer: str = ""


class Ring(BaseModel):
    model_config = {"frozen": True}

    number: str = "ring"


@dataclass
class Calls:
    """The effects of a Box: a CALLING box has a Ring pending; its answer makes it DONE and is announced."""

    performed: list[Ring] = field(default_factory=list)
    meanwhile: Callable[[], Awaitable[None]] | None = None  # what another process does while the call is out

    def pending(self, state: Box | None) -> Ring | None:
        return Ring() if state is not None and state.status == "CALLING" else None

    async def perform(self, order_id: str, state: Box, effect: Ring) -> str:
        self.performed.append(effect)
        if self.meanwhile is not None:
            await self.meanwhile()
        return f"answer-{len(self.performed)}"

    def record(self, state: Box, effect: Ring, result: str, cause: Event) -> tuple[Box, Sequence[EmittedEvent]]:
        # No guard of its own: whether a result still applies is what UnitOfWork.drive must decide.
        return state.model_copy(update={"status": "DONE", "answer": result}), [payment_captured()]


@dataclass
class Rig:
    store: FakeAggregateStore[Box]
    published: Published
    calls: Calls
    aggregates: UnitOfWork[Box]


@pytest.fixture
def rig() -> Rig:
    store: FakeAggregateStore[Box] = FakeAggregateStore()
    published = Published()
    calls = Calls()
    aggregates: UnitOfWork[Box] = UnitOfWork(cast(Any, store), published, out_topic=OUT, effects=calls)
    return Rig(store, published, calls, aggregates)


@dataclass
class Step:
    """A step that notes the event, optionally intends the call, and remembers every state it was given."""

    intend: bool = False
    emit: Sequence[EmittedEvent] = ()
    seen: list[Loaded[Box]] = field(default_factory=list)
    first: Callable[[Loaded[Box]], Awaitable[None]] | None = None  # runs inside the first decision only

    async def __call__(self, doc: Loaded[Box]) -> tuple[Box, Sequence[EmittedEvent]]:
        self.seen.append(doc)
        if self.first is not None and len(self.seen) == 1:
            await self.first(doc)
        box = doc.state or Box()
        update: dict[str, Any] = {"notes": [*box.notes, "step"]}
        if self.intend:
            update["status"] = "CALLING"
        return box.model_copy(update=update), list(self.emit)


def record_of(event: EmittedEvent, cause_id: object) -> OutboxRecord:
    return OutboxRecord.of(OUT, event, cause=cause_id)


async def test_a_new_event_is_decided_once_saved_with_its_records_and_published(rig: Rig) -> None:
    event = cause("Something")
    emitted = payment_authorized()

    saved = await rig.aggregates.handle(event, Step(emit=[emitted]))

    assert saved is not None
    assert (saved.version, saved.inbox) == (1, [str(event.event_id)])
    assert [(r.event_id, r.topic, r.cause) for r in saved.outbox] == [(str(emitted.event_id), OUT, str(event.event_id))]
    assert rig.published.records == saved.outbox
    assert rig.calls.performed == []


async def test_a_duplicate_republishes_exactly_what_it_caused_and_decides_nothing(rig: Rig) -> None:
    event, other = cause("Duplicate"), cause("Other")
    caused, unrelated = payment_authorized(), payment_captured()
    rig.store.put(
        ORDER_ID,
        Box(notes=["before"]),
        inbox=[str(other.event_id), str(event.event_id)],
        outbox=[record_of(unrelated, other.event_id), record_of(caused, event.event_id)],
    )
    rig.store.acknowledged([record_of(unrelated, other.event_id)])  # Kafka took it, as this process saw
    step = Step()

    result = await rig.aggregates.handle(event, step)

    assert result is None
    assert step.seen == []
    assert rig.store.saves == []
    assert [r.event_id for r in rig.published.records] == [str(caused.event_id)]  # the first publish may be lost


async def test_what_an_earlier_cause_emitted_and_kafka_may_not_have_taken_goes_out_first(rig: Rig) -> None:
    earlier, now = cause("PaymentCaptured"), cause("OrderCancellationRequested")
    completed, cancelled = payment_captured(), payment_authorized()
    # A version written and then its publish lost (a crash, a broker failing over): this process never saw it taken.
    rig.store.put(
        ORDER_ID,
        Box(notes=["completed"]),
        inbox=[str(earlier.event_id)],
        outbox=[record_of(completed, earlier.event_id)],
    )

    await rig.aggregates.handle(now, Step(emit=[cancelled]))

    assert [r.event_id for r in rig.published.records] == [str(completed.event_id), str(cancelled.event_id)]
    rig.published.batches.clear()
    await rig.aggregates.handle(cause("Later"), Step(emit=[]))
    assert rig.published.records == [], "once taken, not published again"


async def test_a_redelivered_cause_goes_out_in_its_place_among_what_may_be_unpublished(rig: Rig) -> None:
    first, second, third = cause("First"), cause("Second"), cause("Third")
    a, b, c = payment_authorized(), payment_captured(), payment_authorized()
    rig.store.put(
        ORDER_ID,
        Box(),
        inbox=[str(first.event_id), str(second.event_id), str(third.event_id)],
        outbox=[record_of(a, first.event_id), record_of(b, second.event_id), record_of(c, third.event_id)],
    )
    rig.store.acknowledged([record_of(b, second.event_id)])

    await rig.aggregates.handle(second, Step())

    assert [r.event_id for r in rig.published.records] == [str(a.event_id), str(b.event_id), str(c.event_id)]


async def test_a_step_that_loses_a_version_race_runs_again_on_the_newer_state(rig: Rig) -> None:
    rig.store.put(ORDER_ID, Box(notes=["first"]))

    async def replica_writes(doc: Loaded[Box]) -> None:
        assert doc.state is not None
        rig.store.put(ORDER_ID, doc.state.model_copy(update={"notes": [*doc.state.notes, "replica"]}))

    step = Step(first=replica_writes)
    saved = await rig.aggregates.handle(cause(), step)

    assert [d.version for d in step.seen] == [1, 2]
    assert saved is not None
    assert saved.state is not None
    assert saved.state.notes == ["first", "replica", "step"]  # decided on the latest state, nothing lost
    assert len(rig.store.saves) == 1


async def test_drive_performs_a_pending_effect_once_and_records_its_result(rig: Rig) -> None:
    event = cause("StartCall")

    saved = await rig.aggregates.handle(event, Step(intend=True))

    assert rig.calls.performed == [Ring()]
    assert saved is not None
    assert saved.state == Box(status="DONE", notes=["step"], answer="answer-1")
    assert rig.calls.pending(saved.state) is None
    assert [d.state.status for d in rig.store.saves if d.state] == ["CALLING", "DONE"]  # intent durable before
    assert [r.cause for r in rig.published.records] == [str(event.event_id)]  # the result's event, by its cause


async def test_a_result_for_an_effect_no_longer_pending_is_dropped(rig: Rig) -> None:
    async def cancelled_meanwhile() -> None:
        rig.store.put(ORDER_ID, Box(status="CANCELLED", notes=["cancelled"]))

    rig.calls.meanwhile = cancelled_meanwhile

    saved = await rig.aggregates.handle(cause(), Step(intend=True))

    assert rig.calls.performed == [Ring()]
    assert saved is not None
    assert saved.state == Box(status="CANCELLED", notes=["cancelled"])
    assert rig.store.docs[ORDER_ID].state == Box(status="CANCELLED", notes=["cancelled"])
    assert rig.published.records == []


async def test_a_result_is_recorded_on_the_newer_state_when_the_effect_is_still_pending(rig: Rig) -> None:
    async def noted_meanwhile() -> None:
        doc = rig.store.docs[ORDER_ID]
        assert doc.state is not None
        rig.store.put(ORDER_ID, doc.state.model_copy(update={"notes": [*doc.state.notes, "noted"]}))

    rig.calls.meanwhile = noted_meanwhile

    saved = await rig.aggregates.handle(cause(), Step(intend=True))

    assert rig.calls.performed == [Ring()]  # never called twice for one intent
    assert saved is not None
    assert saved.state == Box(status="DONE", notes=["step", "noted"], answer="answer-1")
    assert len(rig.published.records) == 1


async def test_a_duplicate_finishes_an_effect_a_crash_left_pending(rig: Rig) -> None:
    event = cause("StartCall")
    rig.store.put(ORDER_ID, Box(status="CALLING"), inbox=[str(event.event_id)])
    step = Step()

    await rig.aggregates.handle(event, step)

    assert step.seen == []
    assert rig.calls.performed == [Ring()]
    assert rig.store.docs[ORDER_ID].state == Box(status="DONE", answer="answer-1")


def needs_a_document(step: Step) -> Callable[[Loaded[Box]], Awaitable[tuple[Box, Sequence[EmittedEvent]]]]:
    async def decide(doc: Loaded[Box]) -> tuple[Box, Sequence[EmittedEvent]]:
        if doc.state is None:
            raise PermanentError("event for an unknown order")
        return await step(doc)

    return decide


async def test_a_permanent_error_on_an_assumed_document_confirms_it_and_decides_again(rig: Rig) -> None:
    rig.store.put(ORDER_ID, Box(notes=["exists"]))
    rig.store.unread.add(ORDER_ID)  # written by another process: this one takes it as new without a read
    step = Step()

    saved = await rig.aggregates.handle(cause(), needs_a_document(step))

    assert rig.store.confirmed == [ORDER_ID]
    assert [d.state for d in step.seen] == [Box(notes=["exists"])]
    assert saved is not None
    assert saved.state == Box(notes=["exists", "step"])


async def test_a_permanent_error_on_a_document_that_really_is_missing_is_raised(rig: Rig) -> None:
    with pytest.raises(PermanentError):
        await rig.aggregates.handle(cause(), needs_a_document(Step()))

    assert rig.store.confirmed == [ORDER_ID]
    assert rig.store.saves == []


async def test_a_permanent_error_on_a_document_read_for_real_is_raised_without_a_lookup(rig: Rig) -> None:
    async def refuses(doc: Loaded[Box]) -> tuple[Box, Sequence[EmittedEvent]]:
        raise PermanentError("impossible")

    rig.store.put(ORDER_ID, Box())

    with pytest.raises(PermanentError):
        await rig.aggregates.handle(cause(), refuses)

    assert rig.store.confirmed == []


# --- timers ------------------------------------------------------------------------------------------------------


@dataclass
class FakeTimers:
    log: list[tuple[str, str, str]] = field(default_factory=list)
    store: FakeAggregateStore[Box] | None = None

    def _version(self) -> int:
        doc = self.store.docs.get(ORDER_ID) if self.store is not None else None
        return doc.version if doc is not None else 0

    async def set(self, *, kind: str, key: str, due_at: datetime) -> None:
        self.log.append(("set", kind, f"v{self._version()}"))

    async def clear(self, *, kind: str, key: str) -> None:
        self.log.append(("clear", kind, f"v{self._version()}"))


async def test_a_timer_is_set_before_the_state_that_needs_it_and_cleared_after_the_state_that_ends_it() -> None:
    store: FakeAggregateStore[Box] = FakeAggregateStore()
    timers = FakeTimers(store=store)
    due = datetime(2026, 11, 25, 9, 0)

    def timers_of(box: Box) -> dict[str, datetime | None]:
        return {"call": due if box.status == "CALLING" else None}

    calls = Calls()
    aggregates: UnitOfWork[Box] = UnitOfWork(
        cast(Any, store), Published(), out_topic=OUT, effects=calls, timers=cast(Any, timers), timers_of=timers_of
    )

    await aggregates.handle(cause(), Step(intend=True))

    # v0 -> v1 (CALLING) needs the timer: set while v0 is the latest; v2 (DONE) ends it: cleared once v2 is written.
    assert timers.log == [("set", "call", "v0"), ("clear", "call", "v2")]


async def test_a_timer_stays_when_the_events_of_the_state_that_ends_it_were_not_published() -> None:
    """A timer-driven cause (a review ending) is not redelivered by Kafka: its timer must fire again to publish."""
    store: FakeAggregateStore[Box] = FakeAggregateStore()
    timers = FakeTimers(store=store)
    due = datetime(2026, 11, 25, 9, 0)

    def timers_of(box: Box) -> dict[str, datetime | None]:
        return {"call": due if box.status == "CALLING" else None}

    async def broker_down(records: Sequence[OutboxRecord]) -> None:
        if records:
            raise ConnectionError("Kafka producer rejected")

    aggregates: UnitOfWork[Box] = UnitOfWork(
        cast(Any, store), broker_down, out_topic=OUT, effects=Calls(), timers=cast(Any, timers), timers_of=timers_of
    )

    with pytest.raises(ConnectionError):
        await aggregates.handle(cause(), Step(intend=True))

    assert ("clear", "call", "v2") not in timers.log
    assert timers.log == [("set", "call", "v0")]


# --- a refusal decided on a version another copy has moved on from -----------------------------------------------


def waits_for(note: str, step: Step) -> Callable[[Loaded[Box]], Awaitable[tuple[Box, Sequence[EmittedEvent]]]]:
    """A step that cannot go on before ``note`` happened (as payment's capture before its authorization)."""

    async def decide(doc: Loaded[Box]) -> tuple[Box, Sequence[EmittedEvent]]:
        if doc.state is None or note not in doc.state.notes:
            raise NotYet(f"{note} not yet")
        return await step(doc)

    return decide


async def test_a_refusal_on_a_cached_version_another_copy_moved_on_from_is_decided_again(rig: Rig) -> None:
    rig.store.put(ORDER_ID, Box(notes=["accepted"]))
    rig.store.cached[ORDER_ID] = await rig.store.load(order_id=ORDER_ID)  # what this copy saw, then lost the partition
    rig.store.put(ORDER_ID, Box(notes=["accepted", "authorized"]))  # the other copy's version
    step = Step()

    saved = await rig.aggregates.handle(cause(), waits_for("authorized", step))

    assert rig.store.checked == [ORDER_ID]
    assert saved is not None
    assert saved.state == Box(notes=["accepted", "authorized", "step"])


async def test_a_refusal_on_the_newest_version_stands(rig: Rig) -> None:
    rig.store.put(ORDER_ID, Box(notes=["accepted"]))

    with pytest.raises(NotYet):
        await rig.aggregates.handle(cause(), waits_for("authorized", Step()))

    assert rig.store.checked == [ORDER_ID]
    assert rig.store.saves == []


async def test_two_copies_on_one_store_the_second_never_refuses_on_its_stale_cache() -> None:
    """The real store, on the in-memory database: copy B cached version 1, copy A wrote version 2 meanwhile."""
    memory = InMemoryDatabase()
    copy_a: AggregateStore[Box] = AggregateStore(memory.db, "boxes", Box)
    copy_b: AggregateStore[Box] = AggregateStore(memory.db, "boxes", Box)
    broker = InMemoryBroker()
    b_work: UnitOfWork[Box] = UnitOfWork(copy_b, broker, out_topic=OUT)
    a_work: UnitOfWork[Box] = UnitOfWork(copy_a, broker, out_topic=OUT)

    async def accepted(doc: Loaded[Box]) -> tuple[Box, Sequence[EmittedEvent]]:
        return Box(notes=["accepted"]), []

    async def authorized(doc: Loaded[Box]) -> tuple[Box, Sequence[EmittedEvent]]:
        assert doc.state is not None
        return doc.state.model_copy(update={"notes": [*doc.state.notes, "authorized"]}), []

    await b_work.handle(cause(), accepted)  # B holds version 1 in its cache
    await copy_a.confirm(order_id=ORDER_ID)
    await a_work.handle(payment_authorized(), authorized)  # A, holding the partition now, writes version 2
    step = Step()

    saved = await b_work.handle(payment_captured(), waits_for("authorized", step))  # the partition is B's again

    assert saved is not None
    assert saved.version == 3
    assert saved.state == Box(notes=["accepted", "authorized", "step"])
