"""The Traffic: places the planned orders at their moments and plays each kind's customer (cancellations over HTTP
or Kafka, payment at the provider's cashier, parcels held at the carrier), retrying through the outages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from shared import topics
from tools.drills.chaos.plan import CARRIERS, OrderSpec, Plan, Result, sim_url
from tools.ops import verify

COMPLETION_WAIT = 150.0  # seconds a cancel_completed order may take to complete (outages included)


class Traffic:
    def __init__(self, plan: Plan, http: Any, producer: Any, result: Result) -> None:
        self.plan, self.http, self.producer, self.result = plan, http, producer, result

    async def _retry(self, attempt: Callable[[], Any], *, within: float) -> bool:
        """Call ``attempt`` until it returns True or ``within`` seconds have passed (outages are expected)."""
        deadline = time.monotonic() + within
        pause = 0.2
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if await attempt():
                    return True
            await asyncio.sleep(pause)
            pause = min(pause * 2, 3.0)
        return False

    async def place(self, spec: OrderSpec) -> None:

        key = f"chaos-{spec.order_id}"

        async def post() -> bool:
            try:
                r = await self.http.post(
                    f"{self.plan.order_url}/orders", json=spec.body, headers={"Idempotency-Key": key}
                )
            except httpx.HTTPError:
                return False
            return bool(r.status_code in (200, 202))

        if spec.after_completion:
            await self.hold_parcel(spec)
        if not await self._retry(post, within=120):
            self.result.not_placed.append(spec.order_id)
            return
        self.result.placed += 1
        self.result.kinds[spec.kind] += 1
        if spec.customer is not None:
            await self.at_cashier(spec)
        if spec.after_completion:
            await self.cancel_when_completed(spec)
        elif spec.cancel_after is not None:
            await asyncio.sleep(spec.cancel_after)
            await self.cancel(spec)

    async def hold_parcel(self, spec: OrderSpec) -> None:
        """Hold the order's parcel at every carrier (whichever books it), from before it is booked: it is not
        picked up, so a cancellation after completion calls it back."""

        for carrier in CARRIERS:
            answer: list[int] = []

            async def hold(carrier: str = carrier, answer: list[int] = answer) -> bool:
                try:
                    r = await self.http.post(
                        f"{sim_url()}/control/parcels/hold", json={"carrier": carrier, "order_id": spec.order_id}
                    )
                except httpx.HTTPError:
                    return False
                answer.append(r.status_code)
                return bool(r.status_code in (200, 404))  # 404: the simulator has no such carrier

            if not await self._retry(hold, within=15) or answer[-1] != 200:
                self.result.failures.append(
                    f"{spec.order_id}: its {carrier} parcel not held ({answer[-1] if answer else 'no answer'}): it "
                    "may be picked up before the cancellation"
                )

    async def cancel_when_completed(self, spec: OrderSpec) -> None:
        """The customer cancels the order once it is COMPLETED (its parcel is held: before pickup)."""
        status = ""

        async def ended() -> bool:
            nonlocal status
            r = await self.http.get(f"{self.plan.order_url}/orders/{spec.order_id}")
            status = str(r.json().get("status", "")) if r.status_code == 200 else ""
            return status in verify.TERMINAL

        if not await self._retry(ended, within=COMPLETION_WAIT):
            self.result.failures.append(f"{spec.order_id} not terminal within {COMPLETION_WAIT:.0f}s: not cancelled")
            return
        if status != "COMPLETED":
            self.result.failures.append(f"{spec.order_id} ended {status}, not COMPLETED: not cancelled")
            return
        await asyncio.sleep(spec.cancel_after or 0.0)
        if await self.cancel(spec):
            self.result.cancelled_after_completion.append(spec.order_id)

    async def at_cashier(self, spec: OrderSpec) -> None:
        """The customer at the provider's cashier (the simulator's control API): pays -- its notification
        duplicated, late or out of order -- or walks away until the trade expires."""

        provider = "alipay" if spec.body["payment"]["method"] == "alipay" else "wechatpay"
        sim = sim_url()
        trade = {"provider": provider, "out_trade_no": spec.order_id}

        async def shown() -> bool:
            r = await self.http.get(f"{self.plan.order_url}/orders/{spec.order_id}")
            return bool(r.status_code == 200 and r.json().get("payment_action"))

        async def control(path: str, **extra: Any) -> bool:
            try:
                r = await self.http.post(f"{sim}/control/{path}", json={**trade, **extra})
            except httpx.HTTPError:
                return False
            return bool(r.status_code in (200, 409))  # 409: closed meanwhile (a cancellation won)

        if not await self._retry(shown, within=120):
            self.result.failures.append(f"{spec.order_id} never showed where to pay")
            return
        if spec.customer == "abandon":
            # Scanned, then left: the trade's time is made to run out now (one never scanned would wait for its
            # real expiry, 15 minutes, before the payment service closes it).
            await self._retry(lambda: control("abandon"), within=30)
            await self._retry(lambda: control("expire"), within=30)
            return
        if spec.notify_mode is not None:
            await self._retry(lambda: control("notifications", mode=spec.notify_mode, delay_seconds=3.0), within=30)
        if not await self._retry(lambda: control("pay"), within=60):
            self.result.failures.append(f"{spec.order_id}: the simulator did not take the payment")

    async def cancel(self, spec: OrderSpec) -> bool:
        """Send the customer's cancellation (by Kafka or the order API); False when it could not be sent."""

        if spec.cancel_via_kafka:
            event = {
                "event_type": "OrderCancellationRequested",
                "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"chaos-cancel:{spec.order_id}")),
                "order_id": spec.order_id,
                "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "reason": "customer_request",
            }
            raw = json.dumps(event).encode()

            async def send() -> bool:
                await asyncio.wait_for(
                    self.producer.send_and_wait(
                        topics.STOREFRONT_ORDERS,
                        raw,
                        key=spec.order_id.encode(),
                        headers=[("event_type", b"OrderCancellationRequested")],
                    ),
                    timeout=15,
                )
                return True

            ok = await self._retry(send, within=90)
        else:

            async def post() -> bool:
                try:
                    r = await self.http.post(f"{self.plan.order_url}/orders/{spec.order_id}/cancel")
                except httpx.HTTPError:
                    return False
                return bool(r.status_code == 202)  # 404: the placement is still on its way

            ok = await self._retry(post, within=90)
        if not ok:
            self.result.failures.append(f"cancellation of {spec.order_id} could not be sent")
        return ok

    async def run(self, orders: list[OrderSpec], t0: float) -> None:
        tasks = []
        for spec in orders:
            await asyncio.sleep(max(0.0, t0 + spec.at - time.monotonic()))
            tasks.append(asyncio.create_task(self.place(spec)))
        await asyncio.gather(*tasks)
