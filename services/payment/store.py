"""Payment persistence: one document per order in ``payments`` (state + outbox + inbox).

Every version carries the provider and the Beijing days its money moved (``paid_day``, ``refund_day``) at the top
level, so the daily reconciliation finds a day's payments among the versions without reading every order.
"""

from __future__ import annotations

from services.payment.domain import Payment
from shared.mongo import AggregateStore, Doc


class PaymentStore(AggregateStore[Payment]):
    def indexed(self, state: Payment) -> Doc:
        fields: Doc = {"status": state.status}
        if state.settled:
            fields |= {"provider": state.provider, "paid_day": state.paid_day, "refund_day": state.refund_day}
        return fields

    async def moved_money_on(self, *, provider: str, day: str) -> dict[str, Payment]:
        """Each order whose money moved at ``provider`` on ``day`` (paid or refunded), in its newest state."""
        query = {"provider": provider, "$or": [{"paid_day": day}, {"refund_day": day}]}
        keys = {str(doc["key"]) async for doc in self.docs.versions.find(query, {"key": 1})}
        out = {}
        for key in sorted(keys):  # each in its newest state (a version of that day may have been followed by more)
            latest = await self.read(order_id=key)
            if latest.state is not None:
                out[key] = latest.state
        return out
