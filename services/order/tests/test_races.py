"""Order races the versioned store and the deadline must survive: a store error after the first version reached
the store, writers overtaking a reader, and progress arriving while the deadline decides."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any, cast

import pytest
from pymongo.errors import AutoReconnect

from services.conftest import Rig, eventually, new_order_id
from services.order.backlog import Backlog
from services.order.handlers import Deps, deadline_scanner, on_deadline
from shared.events.order import OrderCancelled
from shared.events.payment import PaymentAuthorized
from shared.events.storefront import OrderPlaced
from shared.mongo import ConcurrentUpdate, Doc
from shared.tasks import cancelled
from tests.unit.factories import order_placed

pytestmark = pytest.mark.infra


class NotBehind:
    async def behind(self, order_id: str) -> bool:
        return False


@pytest.fixture(scope="module")
def deps(rig: Rig) -> Deps:
    built: Deps = dataclasses.replace(rig.deps, backlog=cast(Backlog, NotBehind()))
    return built


def placed(order_id: str) -> OrderPlaced:
    return order_placed(order_id=order_id, event_id=str(uuid.uuid4()))


async def status(deps: Deps, order_id: str) -> str | None:
    doc = await deps.store.load(order_id=order_id)
    return doc.state.status if doc.state is not None else None


async def test_store_error_after_the_first_version_was_written_still_publishes_its_event(rig: Rig) -> None:
    """The insert of version 1 (with OrderAccepted) reaches the store, then the connection drops: the consumer's
    retry must find that version and publish its event -- none stranded, none decided twice."""
    instance = await rig.replica()
    docs = instance.deps.store.docs
    inserts = docs._inserts
    failed: list[Doc] = []

    class ReachesStoreThenDrops:
        async def insert(self, doc: Doc) -> None:
            await inserts.insert(doc)
            if not failed:
                failed.append(doc)
                raise AutoReconnect("connection reset after the insert")

        def __getattr__(self, name: str) -> Any:
            return getattr(inserts, name)

    docs._inserts = cast(Any, ReachesStoreThenDrops())
    order_id = new_order_id()

    assert await rig.on(instance, placed(order_id)) == []

    assert [d["v"] for d in failed] == [1]
    assert await rig.distinct_events(order_id) == ["OrderAccepted"]
    assert str((await rig.events(order_id))[0].event_id) == failed[0]["outbox"][0]["event_id"]
    assert await docs.version(order_id, 2) is None  # the retry decided nothing again


async def test_a_reader_overtaken_by_three_writers_cannot_write_over_them(rig: Rig, deps: Deps) -> None:
    order_id = new_order_id()
    assert await rig.deliver(deps, placed(order_id)) == []
    reader = (await rig.replica()).deps.store
    await eventually(lambda: _head_written(deps, order_id))
    seen = await reader.confirm(order_id=order_id)  # another process reads version c
    assert seen.state is not None

    for who in ("one", "two", "three"):  # meanwhile three writes land: c+1, c+2, c+3
        latest = await deps.store.load(order_id=order_id)
        assert latest.state is not None
        await deps.store.save(latest, state=latest.state.model_copy(update={"reason": who}))

    with pytest.raises(ConcurrentUpdate):
        await reader.save(seen, state=seen.state.model_copy(update={"reason": "stale reader"}))

    after = await deps.store.load(order_id=order_id)
    assert after.version == seen.version + 3
    assert after.state is not None
    assert after.state.reason == "three"


async def test_progress_while_the_deadline_decides_only_moves_the_deadline_on(rig: Rig, deps: Deps) -> None:
    """The deadline read the order past due; while it asks whether the saga is behind, the order moves on. That
    deadline is void -- and the next one, when the order stalls again, still cancels it."""
    order_id = new_order_id()
    event = placed(order_id)
    assert await rig.deliver(deps, event) == []

    class ProgressWhileAsked:
        asked = 0

        async def behind(self, order_id: str) -> bool:
            self.asked += 1
            if self.asked == 1:  # the consumer handles the payment meanwhile (re-arms the deadline)
                authorized = PaymentAuthorized.caused_by(
                    event, amount=event.lines[0].unit_price, currency="CNY", authorization_id="auth-race"
                )
                assert await rig.deliver(deps, authorized) == []
            return False

    racing = dataclasses.replace(deps, backlog=cast(Backlog, ProgressWhileAsked()))
    await eventually(lambda: _deadline_passed(deps, order_id))
    await eventually(lambda: _head_written(deps, order_id))

    await on_deadline(order_id, racing)

    assert await status(deps, order_id) == "PENDING"  # it moved on: not cancelled on a stale reading
    assert await rig.event_types(order_id) == ["OrderAccepted"]

    scanner = asyncio.create_task(deadline_scanner(racing, interval=0.05))
    try:
        await eventually(lambda: _cancelled(deps, order_id), within=10)
        await eventually(lambda: _published(rig, order_id, "OrderCancelled"))
    finally:
        await cancelled(scanner)
    published = await rig.events(order_id)
    assert [e.event_type for e in published] == ["OrderAccepted", "OrderCancelled"]
    assert isinstance(published[1], OrderCancelled)
    assert published[1].reason == "timeout"


async def _head_written(deps: Deps, order_id: str) -> bool:
    return (await deps.store.read(order_id=order_id)).version == (await deps.store.load(order_id=order_id)).version


async def _deadline_passed(deps: Deps, order_id: str) -> bool:
    from shared.events.base import now

    doc = await deps.store.load(order_id=order_id)
    return doc.state is not None and doc.state.deadline_at is not None and doc.state.deadline_at <= now()


async def _cancelled(deps: Deps, order_id: str) -> bool:
    return await status(deps, order_id) == "CANCELLED"


async def _published(rig: Rig, order_id: str, event_type: str) -> bool:
    return event_type in await rig.event_types(order_id)
