"""The payment provider, behind an interface, and its sandbox (a provider's test mode).

Every call carries an idempotency key; the provider remembers each key's first answer, so a call retried after a
crash or a timeout never charges twice. The sandbox keeps that memory in its own collection (``gateway_ledger``),
as a real provider would on its side, which also makes every money movement countable in tests.

Sandbox tokens: ``tok_decline`` is declined; ``tok_review`` is held for risk review, then approved;
``tok_unavailable`` answers like a provider outage (a transient error) -- anything else is approved.
Fault injection for drills and tests: while the document ``{_id: "gateway", "unavailable": true}`` exists in the
payment database's ``sandbox_faults`` collection, every authorisation fails like a provider outage.
"""

from __future__ import annotations

import hashlib
import time
from decimal import Decimal
from typing import Any, Literal, Protocol

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.payment.domain import GatewayResult
from shared import telemetry
from shared.consumer import TransientError
from shared.events.base import now
from shared.mongo import grouped


class PaymentGateway(Protocol):
    async def authorize(
        self,
        *,
        idempotency_key: str,
        order_id: str,
        method: str,
        token: str,
        amount: Decimal,
        currency: str,
        after_review: bool = False,
    ) -> GatewayResult: ...

    async def capture(self, *, idempotency_key: str, order_id: str, authorization_id: str, amount: Decimal) -> str: ...

    async def void(self, *, idempotency_key: str, order_id: str, authorization_id: str) -> str: ...

    async def refund(self, *, idempotency_key: str, order_id: str, capture_id: str, amount: Decimal) -> str: ...


Operation = Literal["authorize", "capture", "void", "refund"]


class SandboxGateway:
    """Deterministic test-mode provider for alipay, wechat_pay and card."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.ledger = db["gateway_ledger"]
        self.faults = db["sandbox_faults"]
        self._faults_read_at = float("-inf")
        self._down = False

    async def _once(self, op: Operation, key: str, order_id: str, result: dict[str, Any]) -> dict[str, Any]:
        with telemetry.tracer().start_as_current_span(
            f"gateway {op}",
            kind=telemetry.SpanKind.CLIENT,
            attributes={"order.id": order_id, "payment.operation": op, "payment.provider": "sandbox"},
        ):
            try:
                await grouped(self.ledger).insert({"_id": key, "op": op, "order_id": order_id, "at": now(), **result})
            except DuplicateKeyError:
                stored = await self.ledger.find_one({"_id": key})
                assert stored is not None
                return stored
            return result

    async def _provider_down(self) -> bool:
        """The fault switch, read at most once a second (it is a drill switch, not worth a round trip per call)."""
        at = time.monotonic()
        if at - self._faults_read_at > 1.0:
            self._faults_read_at = at
            self._down = bool(await self.faults.count_documents({"_id": "gateway", "unavailable": True}))
        return self._down

    @staticmethod
    def _reference(prefix: str, key: str) -> str:
        return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    async def authorize(
        self,
        *,
        idempotency_key: str,
        order_id: str,
        method: str,
        token: str,
        amount: Decimal,
        currency: str,
        after_review: bool = False,
    ) -> GatewayResult:
        if token == "tok_unavailable" or await self._provider_down():
            raise TransientError("payment provider unavailable (HTTP 503)")
        if token == "tok_decline":
            result = {"outcome": "declined", "reason": "payment_declined"}
        elif token == "tok_review" and not after_review:
            return GatewayResult(outcome="review")  # nothing recorded: a review holds no money yet
        else:
            result = {"outcome": "approved", "reference": self._reference("auth", idempotency_key)}
        stored = await self._once("authorize", idempotency_key, order_id, {**result, "amount": str(amount)})
        return GatewayResult(
            outcome=stored["outcome"], reference=stored.get("reference", ""), reason=stored.get("reason", "")
        )

    async def capture(self, *, idempotency_key: str, order_id: str, authorization_id: str, amount: Decimal) -> str:
        ref = self._reference("cap", idempotency_key)
        stored = await self._once("capture", idempotency_key, order_id, {"reference": ref, "amount": str(amount)})
        return str(stored["reference"])

    async def void(self, *, idempotency_key: str, order_id: str, authorization_id: str) -> str:
        ref = self._reference("void", idempotency_key)
        stored = await self._once("void", idempotency_key, order_id, {"reference": ref, "of": authorization_id})
        return str(stored["reference"])

    async def refund(self, *, idempotency_key: str, order_id: str, capture_id: str, amount: Decimal) -> str:
        ref = self._reference("ref", idempotency_key)
        stored = await self._once("refund", idempotency_key, order_id, {"reference": ref, "amount": str(amount)})
        return str(stored["reference"])
