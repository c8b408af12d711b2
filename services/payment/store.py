"""Payment persistence: one document per order in ``payments`` (state + outbox + inbox)."""

from __future__ import annotations

from services.payment.domain import Payment
from shared.mongo import AggregateStore, Doc


class PaymentStore(AggregateStore[Payment]):
    def indexed(self, state: Payment) -> Doc:
        return {"status": state.status}
