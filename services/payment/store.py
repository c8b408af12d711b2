"""Payment persistence: one document per order in ``payments`` (state + outbox + inbox)."""

from __future__ import annotations

from datetime import datetime, timedelta

from pymongo import ASCENDING

from services.payment.domain import Payment
from shared.mongo import AggregateStore, Doc

STALE_CLAIM = timedelta(seconds=30)


class PaymentStore(AggregateStore[Payment]):
    async def ensure_indexes(self) -> None:
        await super().ensure_indexes()
        await self.coll.create_index([("review_due_at", ASCENDING)], name="review_due_at", sparse=True)

    def indexed(self, state: Payment) -> Doc:
        if state.status == "REVIEW" and state.review_until is not None:
            return {"review_due_at": state.review_until}
        if state.status == "AUTHORIZING" and state.claimed_at is not None:
            # A claim left by a crashed process is picked up again once it is clearly stale.
            return {"review_due_at": state.claimed_at + STALE_CLAIM}
        return {}

    async def due_reviews(self, *, at: datetime, limit: int = 100) -> list[str]:
        found = await self.latest_matching({"review_due_at": {"$lte": at}}, limit=limit)
        return [d.order_id for d in found]
