"""What a bench run does (Plan) and the orders it places (OrderMix): the catalogue, the hot SKU, the declines and
the sold-out orders, and the stock set before the run."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson

from shared import topics
from shared.tasks import cancelled
from tools.ops.samples import DECLINE_TOKEN, SOLD_OUT_SKU, order_line, order_placed, order_request

TARGET_ORDERS_PER_SECOND = 740
DEFAULT_STEPS = (2, 5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 300, 500, 740)  # finer where 2 cores top out

# The happy path on each topic, from the topic table of docs/events.md:
# topic -> (records one order produces there, consumer groups that read them).
SAGA_FLOW: dict[str, tuple[int, int]] = {
    topics.STOREFRONT_ORDERS: (1, 1),  # OrderPlaced -> order
    topics.ORDER_EVENTS: (2, 4),  # OrderAccepted, OrderCompleted -> payment, inventory, shipping, notify
    topics.PAYMENT_EVENTS: (2, 2),  # PaymentAuthorized, PaymentCaptured -> order, inventory
    topics.INVENTORY_EVENTS: (1, 2),  # StockReserved -> order, shipping
    topics.SHIPPING_EVENTS: (1, 2),  # ShipmentScheduled -> order, payment
    topics.NOTIFY_EVENTS: (1, 1),  # NotificationSent -> order
}
RECORDS_PRODUCED_PER_ORDER = sum(n for n, _ in SAGA_FLOW.values())  # 8
RECORDS_CONSUMED_PER_ORDER = sum(n * groups for n, groups in SAGA_FLOW.values())  # 18
RECORDS_PER_ORDER = RECORDS_PRODUCED_PER_ORDER + RECORDS_CONSUMED_PER_ORDER  # 26

TERMINAL = {"OrderCompleted": "completed", "OrderCancelled": "cancelled", "OrderRejected": "rejected"}
ENDED_STATUSES = {"COMPLETED", "CANCELLED", "REJECTED"}  # what an order stream shows last
HOT_SKU = "BENCH-HOT"
AMPLE_STOCK = 1_000_000

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What one run does; ``search``, ``fixed`` and ``smoke`` build the three kinds."""

    mode: Literal["search", "fixed", "smoke"]
    steps: tuple[float, ...] = DEFAULT_STEPS
    step_seconds: float = 15.0
    grace_seconds: float = 10.0  # after a step, how long its orders may take to end and still count as kept up
    sustain_seconds: float = 60.0
    latency_seconds: float = 30.0
    rate: float = 0.0  # fixed and smoke runs
    seconds: float = 0.0
    drain_seconds: float = 120.0  # the bounded wait for the last orders at the end of every run
    catalogue_size: int = 200
    hot_share: float = 0.3  # share of orders with the hot SKU in them
    decline_share: float = 0.03
    sold_out_share: float = 0.02
    ceiling_orders: int = 20_000
    ceiling_seconds: float = 60.0  # bound on each half (produce, consume) of the ceiling measurement
    seed: int = 0
    overload: float = 0.0  # after the run: this many times its rate for overload_seconds, then the drain is timed
    overload_seconds: float = 60.0
    streams: int = 0  # live-tracking streams held open during a second phase, compared with a first without
    review_hold_seconds: float = 20.0  # PAYMENT_REVIEW_HOLD_SECONDS of the running payment service
    inventory_url: str = "http://127.0.0.1:8082"
    order_url: str = "http://127.0.0.1:8080"
    out_dir: Path = Path(".local/bench")

    @classmethod
    def search(cls, **overrides: Any) -> Plan:
        return cls(mode="search", **overrides)

    @classmethod
    def fixed(cls, *, rate: float, seconds: float, **overrides: Any) -> Plan:
        return cls(mode="fixed", rate=rate, seconds=seconds, **overrides)

    @classmethod
    def smoke(cls, **overrides: Any) -> Plan:
        """About ten seconds in all: a small catalogue, a short low-rate run, a small ceiling (CI keeps it working)."""
        base: dict[str, Any] = {
            "rate": 3.0,
            "seconds": 5.0,
            "grace_seconds": 3.0,
            "drain_seconds": 8.0,
            "catalogue_size": 10,
            "ceiling_orders": 2_000,
            "ceiling_seconds": 10.0,
        }
        return cls(mode="smoke", **{**base, **overrides})


def new_run_id(now: datetime | None = None, suffix: str | None = None) -> str:
    """A run's id, as in ``BENCH-1205T163458a3f0-0000001``: the time, then 4 random hex digits. The ``T`` keeps
    the digits apart: ``1205163458`` + ``2703`` would be 14 digits in a row, and one such id in ten passes the Luhn
    check -- a card number, which the order service refuses to store (every order of that run dead-lettered)."""
    stamp = (now or datetime.now(UTC)).strftime("%m%dT%H%M%S")
    return stamp + (suffix if suffix is not None else uuid.uuid4().hex[:4])


class OrderMix:
    """Realistic ``OrderPlaced`` records, reproducible from the seed; each id is ``BENCH-<run>-<n>``."""

    LINES = (1, 2, 3, 4, 5)
    LINE_WEIGHTS = (45, 25, 15, 10, 5)

    def __init__(self, plan: Plan, run: str) -> None:
        self.plan = plan
        self.run = run
        self.prefix = f"BENCH-{run}-"
        self.rng = random.Random(plan.seed)
        self.catalogue = [f"BENCH-{i:04d}" for i in range(plan.catalogue_size)]
        self.prices = {sku: f"{self.rng.randint(190, 99_900) / 100:.2f}" for sku in [*self.catalogue, HOT_SKU]}
        self.prices[SOLD_OUT_SKU] = "19.90"
        self.count = 0

    def next(self) -> tuple[str, bytes, str]:
        """(order id, JSON value, kind: ok | decline | sold_out)."""
        rng = self.rng
        n = self.count
        self.count += 1
        order_id = f"{self.prefix}{n:07d}"
        roll = rng.random()
        kind = "decline" if roll < self.plan.decline_share else "ok"
        if self.plan.decline_share <= roll < self.plan.decline_share + self.plan.sold_out_share:
            kind = "sold_out"
        lines_n = rng.choices(self.LINES, self.LINE_WEIGHTS)[0]
        skus = rng.sample(self.catalogue, min(lines_n, len(self.catalogue)))
        if rng.random() < self.plan.hot_share:
            skus[0] = HOT_SKU
        if kind == "sold_out":
            skus[-1] = SOLD_OUT_SKU
        option = rng.choice(("standard", "standard", "next_day", "scheduled"))
        # The draws keep their old order (event id, quantities, payment method): a seed gives the orders it always did.
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        lines = [order_line(s, rng.choice((1, 1, 1, 2, 3)), self.prices[s]) for s in skus]
        request = order_request(
            order_id,
            lines=lines,
            customer_id=f"bench-{n % 5000}",
            name=f"Bench Customer {n % 997}",
            email=f"{order_id.lower()}@example.com",
            phone="+8613800000000",
            method=rng.choice(("alipay", "wechat_pay", "card")),
            token=DECLINE_TOKEN if kind == "decline" else "tok_bench_ok",
            option=option,
            scheduled_date=(date.today() + timedelta(days=3)).isoformat() if option == "scheduled" else None,
            line1=f"{n % 300 + 1} Zhongguancun St",
        )
        occurred_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        value = order_placed(request, event_id=event_id, occurred_at=occurred_at)
        return order_id, orjson.dumps(value), kind

    def skus(self) -> list[str]:
        """The bench's own SKUs, whose stock the run sets."""
        return [*self.catalogue, HOT_SKU]


async def stock_up(plan: Plan, skus: Iterable[str]) -> None:
    """Ample stock for the bench's SKUs through the inventory API, so the demo catalogue never starves a run."""
    key = os.environ.get("FULFIL_API_KEY")
    headers = {"X-API-Key": key} if key else {}
    limit = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=plan.inventory_url, timeout=15, headers=headers) as http:

        async def put(sku: str) -> None:
            async with limit:
                r = await http.put(f"/stock/{sku}", json={"available": AMPLE_STOCK})
                r.raise_for_status()

        tasks = [asyncio.create_task(put(s)) for s in skus]
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*tasks)
        except (TimeoutError, httpx.HTTPError) as e:
            raise RuntimeError(f"could not set the bench stock through {plan.inventory_url}: {e!r}") from e
        finally:
            await cancelled(*tasks)
