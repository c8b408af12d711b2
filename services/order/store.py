"""Order persistence: one document per order in ``orders`` (state, history, outbox, inbox)."""

from __future__ import annotations

from datetime import datetime

from pymongo import ASCENDING

from services.order.domain import Order
from shared.mongo import AggregateStore, Doc, Loaded


class OrderStore(AggregateStore[Order]):
    HEADS = True  # the order API, `fulfil order` and `fulfil stuck` read the orders' head copies

    async def ensure_indexes(self) -> None:
        await super().ensure_indexes()
        await self.coll.create_index([("status", ASCENDING), ("updated_at", ASCENDING)], name="status_updated")

    def indexed(self, state: Order) -> Doc:
        return {"status": state.status, "stage": state.stage, "accepted_at": state.accepted_at or state.placed_at}

    async def not_terminal(self, *, placed_before: datetime, limit: int = 500) -> list[Order]:
        """Orders still PENDING that were accepted before the given time, oldest first (``fulfil stuck``)."""
        found = await self.latest_matching(
            {"status": "PENDING", "accepted_at": {"$lte": placed_before}}, sort="accepted_at", limit=limit
        )
        return [d.state for d in found if d.state is not None]

    async def version(self, *, order_id: str, version: int) -> Loaded[Order] | None:
        """One version of the order as it was written (the order stream fills in versions it did not see)."""
        doc = await self.docs.version(order_id, version)
        return self._loaded(order_id, doc) if doc is not None else None
