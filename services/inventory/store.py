"""Inventory persistence: per-order ``reservations`` documents, and the ``stock`` collection of SKUs.

A SKU document is ``{_id: sku, available, reserved, holds: {<order>: quantity}}``. Reserving is one conditional
update that succeeds only while ``available >= quantity`` and the order holds nothing yet, so ``available`` can
never go negative, of concurrent orders for the last unit exactly one wins, and a redelivered reservation is a
no-op. Releasing and committing match the hold the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pymongo.asynchronous.database import AsyncDatabase

from services.inventory.domain import Reservation
from shared import telemetry
from shared.events.inventory import StockLine
from shared.mongo import AggregateStore, Doc


class ReservationStore(AggregateStore[Reservation]):
    pass


class StockLevel(BaseModel):
    sku: str
    available: int
    reserved: int


def _hold(order_id: str) -> str:
    # Order ids may contain dots, which Mongo reads as a path; '%' never occurs in an order id.
    return "holds." + order_id.replace("%", "%25").replace(".", "%2E")


class StockStore:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.coll = db["stock"]

    def _span(self, op: str, order_id: str, sku: str) -> Any:
        return telemetry.tracer().start_as_current_span(
            f"stock {op}",
            attributes={"order.id": order_id, "stock.sku": sku, "db.system": "mongodb"},
        )

    async def reserve(self, *, order_id: str, sku: str, quantity: int) -> bool:
        hold = _hold(order_id)
        with self._span("reserve", order_id, sku):
            res = await self.coll.update_one(
                {"_id": sku, "available": {"$gte": quantity}, hold: {"$exists": False}},
                {"$inc": {"available": -quantity, "reserved": quantity}, "$set": {hold: quantity}},
            )
            if res.modified_count == 1:
                return True
            # Either this order already holds it (a redelivery) or there is not enough.
            return await self.coll.count_documents({"_id": sku, hold: {"$exists": True}}) == 1

    async def release(self, *, order_id: str, sku: str) -> int:
        return await self._drop_hold(order_id, sku, give_back=True)

    async def commit(self, *, order_id: str, sku: str) -> int:
        return await self._drop_hold(order_id, sku, give_back=False)

    async def _drop_hold(self, order_id: str, sku: str, *, give_back: bool) -> int:
        hold = _hold(order_id)
        with self._span("release" if give_back else "commit", order_id, sku):
            doc = await self.coll.find_one({"_id": sku, hold: {"$exists": True}})
            if doc is None:
                return 0
            qty = int(doc["holds"][hold.removeprefix("holds.")])
            inc = {"reserved": -qty, **({"available": qty} if give_back else {})}
            res = await self.coll.update_one({"_id": sku, hold: qty}, {"$inc": inc, "$unset": {hold: ""}})
            return qty if res.modified_count == 1 else 0

    async def reserve_all(self, *, order_id: str, lines: Sequence[StockLine]) -> list[str]:
        """Reserve every line or none; returns the SKUs that were short (empty when all are held)."""
        short = [ln.sku for ln in lines if not await self.reserve(order_id=order_id, sku=ln.sku, quantity=ln.quantity)]
        if short:
            await self.release_all(order_id=order_id, lines=lines)
        return short

    async def release_all(self, *, order_id: str, lines: Sequence[StockLine]) -> None:
        for ln in lines:
            await self.release(order_id=order_id, sku=ln.sku)

    async def commit_all(self, *, order_id: str, lines: Sequence[StockLine]) -> None:
        for ln in lines:
            await self.commit(order_id=order_id, sku=ln.sku)

    async def get(self, *, sku: str) -> StockLevel | None:
        doc = await self.coll.find_one({"_id": sku}, {"available": 1, "reserved": 1})
        if doc is None:
            return None
        return StockLevel(sku=sku, available=int(doc.get("available", 0)), reserved=int(doc.get("reserved", 0)))

    async def set_available(self, *, sku: str, available: int) -> StockLevel:
        """An ERP stock adjustment: units available for sale; holds of open orders are kept."""
        await self.coll.update_one(
            {"_id": sku},
            {"$set": {"available": available}, "$setOnInsert": {"reserved": 0, "holds": {}}},
            upsert=True,
        )
        level = await self.get(sku=sku)
        assert level is not None
        return level
