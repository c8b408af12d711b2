"""Inventory persistence: per-order ``reservations`` documents, and the ``stock`` collection of SKUs.

A SKU document is ``{available, reserved, shipped, received, holds: {<order>: quantity}, closed: [<order>...]}``,
kept as versions like every document here (see ``shared.mongo``); ``received`` counts every unit ever put in
(seeding, adjustments) and ``shipped`` every unit committed by a completed order, so
``received == available + reserved + shipped`` always. Reserving reads the latest version and inserts the next one
only while ``available >= quantity`` and the order holds nothing yet; the insert fails if anyone else wrote that
version first, and the reservation is decided again on the newer stock. So ``available`` never goes negative, of
concurrent orders for the last unit exactly one wins (on MongoDB and on FerretDB alike), and a redelivered
reservation is a no-op.

``holds`` and ``closed`` are the idempotency record of the stock writes, per (order, SKU): a reserve for an order
that holds the SKU already holds nothing more; a release or a commit of an order that holds nothing gives back or
ships nothing. A release or a commit also *closes* the order on the SKU (``closed``: the latest :data:`CLOSED_KEEP`
orders closed here), and a reserve for a closed order holds nothing. Two copies of the service may be making the same
reservation's writes at once (one met the intent while the other was still at it), and the slower one may reach a
SKU only after the faster one's answer was recorded and the units given back or shipped: without the mark it would
hold them again, for an order that holds nothing any more, for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from pymongo.asynchronous.database import AsyncDatabase

from services.inventory.domain import Reservation, pending
from shared import telemetry
from shared.mongo import AggregateStore, Doc, Loaded, VersionedCollection, on_concurrent_update

# Orders remembered as closed per SKU: far more than are closed on one SKU while a reservation's writes are made.
CLOSED_KEEP = 200


def _counts(doc: Doc) -> dict[str, int]:
    """Counters of a SKU document (documents written before they existed count what they hold as received)."""
    shipped = int(doc.get("shipped", 0))
    received = int(doc.get("received", int(doc["available"]) + int(doc["reserved"]) + shipped))
    return {"shipped": shipped, "received": received}


class ReservationStore(AggregateStore[Reservation]):
    # Whoever loads a reservation with stock writes pending makes them: never on a guessed version, or a replayed
    # event could take stock for an order already shipped.
    EXACT = True

    async def load(self, *, order_id: str) -> Loaded[Reservation]:
        """As stored, whenever it has stock writes pending: this process's copy may be behind the other copy's, which
        answered them and gave the units back or shipped them meanwhile (loads that find nothing pending -- nearly
        all -- keep the cached copy: a decision on it is written only if it is still the newest)."""
        doc = await super().load(order_id=order_id)
        if pending(doc.state) is None:
            return doc
        self.docs.forget(order_id)
        return await super().load(order_id=order_id)


class StockLevel(BaseModel):
    sku: str
    available: int
    reserved: int
    shipped: int = 0
    received: int = 0


def _hold(order_id: str) -> str:
    # Order ids may contain dots, which are not allowed in field names; "%" never occurs in an order id.
    return order_id.replace("%", "%25").replace(".", "%2E")


def _unhold(key: str) -> str:
    return key.replace("%2E", ".").replace("%25", "%")


class StockStore:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.coll = db["stock"]
        self.docs = VersionedCollection(self.coll)
        # One writer per SKU in this process: a hot SKU's changes queue here and are written together.
        self._queues: dict[str, list[tuple[Callable[[Doc | None], Doc | None], asyncio.Future[Doc | None]]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}

    async def ensure_indexes(self) -> None:
        await self.docs.ensure_indexes()

    def _span(self, op: str, order_id: str, sku: str) -> Any:
        return telemetry.tracer().start_as_current_span(
            f"stock {op}",
            attributes={"order.id": order_id, "stock.sku": sku, "db.system": "mongodb"},
        )

    async def _change(self, sku: str, change: Callable[[Doc | None], Doc | None]) -> Doc | None:
        """Apply ``change`` to the latest version and write the result as the next one, retrying on races.

        ``change`` returns the new body, or None to write nothing; the body written (or None) is returned.
        Changes to one SKU queue here and are written together: a worker applies every queued change in turn and
        writes one version for all of them, so a hot SKU costs one store write per batch, not per order.
        """
        fut: asyncio.Future[Doc | None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(sku, []).append((change, fut))
        if sku not in self._workers:
            self._workers[sku] = asyncio.get_running_loop().create_task(self._work(sku))
        return await fut

    async def _work(self, sku: str) -> None:
        try:
            while batch := self._queues.pop(sku, []):
                try:
                    results = await self._apply(sku, [change for change, _ in batch])
                except Exception as e:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            del self._workers[sku]

    async def _apply(self, sku: str, changes: list[Callable[[Doc | None], Doc | None]]) -> list[Doc | None]:
        async def attempt(_: int) -> list[Doc | None]:
            doc = await self.docs.current(sku)
            body, results = doc, []
            for change in changes:
                new = change(body)
                results.append(new)
                body = new if new is not None else body
            if body is not doc:
                assert body is not None
                await self.docs.write(sku, read_version=doc["v"] if doc else 0, body=body)
            return results

        return await on_concurrent_update(attempt)

    async def reserve(self, *, order_id: str, sku: str, quantity: int) -> bool:
        hold = _hold(order_id)
        outcome: list[bool] = []

        def take(doc: Doc | None) -> Doc | None:
            outcome.clear()
            if doc is not None and hold in doc["holds"]:
                outcome.append(True)  # made already (a redelivery, the other copy): this order holds it
                return None
            if doc is None or hold in doc.get("closed", ()) or doc["available"] < quantity:
                outcome.append(False)  # short, or closed (given back or shipped): never held again
                return None
            outcome.append(True)
            return {
                **_counts(doc),
                "available": doc["available"] - quantity,
                "reserved": doc["reserved"] + quantity,
                "holds": {**doc["holds"], hold: quantity},
                "closed": doc.get("closed", []),
            }

        with self._span("reserve", order_id, sku):
            await self._change(sku, take)
        return outcome == [True]

    async def release(self, *, order_id: str, sku: str) -> int:
        """Give the order's units back and close the order on the SKU; returns the units given back."""
        return await self._drop_hold(order_id, sku, give_back=True)

    async def commit(self, *, order_id: str, sku: str) -> int:
        """Count the order's units as shipped and close the order on the SKU; returns the units shipped."""
        return await self._drop_hold(order_id, sku, give_back=False)

    async def _drop_hold(self, order_id: str, sku: str, *, give_back: bool) -> int:
        hold = _hold(order_id)
        dropped: list[int] = []

        def drop(doc: Doc | None) -> Doc | None:
            dropped.clear()
            if doc is None:
                return None
            closed: list[str] = list(doc.get("closed", []))
            if hold not in closed:
                closed = [*closed, hold][-CLOSED_KEEP:]
            elif hold not in doc["holds"]:
                return None  # closed already: made before (a redelivery, the other copy)
            qty = int(doc["holds"].get(hold, 0))
            if qty:
                dropped.append(qty)
            counts = _counts(doc)
            return {
                **counts,
                "available": doc["available"] + (qty if give_back else 0),
                "reserved": doc["reserved"] - qty,
                "shipped": counts["shipped"] + (0 if give_back else qty),
                "holds": {k: v for k, v in doc["holds"].items() if k != hold},
                "closed": closed,
            }

        with self._span("release" if give_back else "commit", order_id, sku):
            await self._change(sku, drop)
        return dropped[0] if dropped else 0

    async def get(self, *, sku: str) -> StockLevel | None:
        doc = await self.docs.current(sku)
        if doc is None:
            return None
        counts = _counts(doc)
        return StockLevel(
            sku=sku,
            available=int(doc["available"]),
            reserved=int(doc["reserved"]),
            shipped=counts["shipped"],
            received=counts["received"],
        )

    async def holds(self, *, sku: str) -> dict[str, int] | None:
        """The units each order holds of ``sku`` (None for an unknown SKU): what an audit checks against the orders'
        outcomes, since an ended order must hold nothing."""
        doc = await self.docs.current(sku)
        if doc is None:
            return None
        return {_unhold(key): int(qty) for key, qty in (doc.get("holds") or {}).items()}

    async def set_on_hand(self, *, sku: str, on_hand: int) -> StockLevel:
        """Seeding: units in the warehouse, held ones included, so re-seeding while orders hold units never
        creates stock out of nothing (available = on hand - reserved, never below zero)."""
        # Read ``reserved`` in the change itself: a reservation applied between a separate read and the write
        # would otherwise be added on top of what was seeded.
        return await self._set(sku, lambda doc: max(on_hand - (int(doc["reserved"]) if doc else 0), 0))

    async def set_available(self, *, sku: str, available: int) -> StockLevel:
        """An ERP stock adjustment: units available for sale; holds of open orders are kept, and the difference
        is counted as received (or written off, if negative)."""
        return await self._set(sku, lambda _doc: available)

    async def _set(self, sku: str, available_of: Callable[[Doc | None], int]) -> StockLevel:
        def adjust(doc: Doc | None) -> Doc:
            available = available_of(doc)
            if doc is None:
                return {
                    "available": available,
                    "reserved": 0,
                    "shipped": 0,
                    "received": available,
                    "holds": {},
                    "closed": [],
                }
            counts = _counts(doc)
            return {
                **counts,
                "available": available,
                "reserved": doc["reserved"],
                "received": counts["received"] + available - int(doc["available"]),
                "holds": doc["holds"],
                "closed": doc.get("closed", []),
            }

        await self._change(sku, adjust)
        level = await self.get(sku=sku)
        assert level is not None
        return level
