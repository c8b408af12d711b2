"""``python -m tools.console.bench``: how fast the board answers with many orders in the console's memory.

Feeds synthetic orders (100,000 by default, spread over the last hour: most completed, some cancelled, some in
flight and some stuck) through the same fold and KPI book the live console uses, then times the board's endpoints
in-process (key check, fold snapshot, templates and chart specs included; no network). Prints figures, asserts none.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient
from pydantic import SecretStr

from shared import topics
from tools.console.app import create_app
from tools.console.fold import SagaFold
from tools.console.settings import ConsoleSettings
from tools.console.state import Console

KEY = "bench-operator-key-0123456789"
METHODS = ("alipay", "wechat_pay", "card")
OPTIONS = ("standard", "next_day")
CARRIERS = ("SF", "ZTO", "YTO")


def synthetic_order(i: int, start: float, rng: random.Random) -> list[tuple[str, dict[str, Any], float]]:
    """One order's records (topic, value, timestamp in s), shaped like the real events the fold and book read."""
    order_id = f"BENCH-{i:07d}"

    def ev(event_type: str, **fields: Any) -> dict[str, Any]:
        event_id = str(uuid.UUID(int=rng.getrandbits(128)))
        return {"event_type": event_type, "event_id": event_id, "order_id": order_id, **fields}

    total = f"{rng.randint(10, 500)}.{rng.randint(0, 99):02d}"
    method, option = rng.choice(METHODS), rng.choice(OPTIONS)
    placed = ev("OrderPlaced") | {"payment": {"method": method}, "shipping": {"option": option}}
    accepted = ev("OrderAccepted") | {
        "total": total,
        "currency": "CNY",
        "payment": {"method": method},
        "shipping": {"option": option},
    }
    out = [(topics.STOREFRONT_ORDERS, placed, start), (topics.ORDER_EVENTS, accepted, start + 0.02)]
    fate = rng.random()
    if fate < 0.03:  # in flight: stopped after payment (the oldest of them are stuck)
        return [*out, (topics.PAYMENT_EVENTS, ev("PaymentAuthorized", amount=total, currency="CNY"), start + 0.05)]
    if fate < 0.10:
        cancelled = ev("OrderCancelled") | {"reason": "payment_declined"}
        return [
            *out,
            (topics.PAYMENT_EVENTS, ev("PaymentDeclined") | {"reason": "declined"}, start + 0.05),
            (topics.ORDER_EVENTS, cancelled, start + 0.07),
        ]
    carrier = rng.choice(CARRIERS)
    return [
        *out,
        (topics.PAYMENT_EVENTS, ev("PaymentAuthorized") | {"amount": total, "currency": "CNY"}, start + 0.05),
        (topics.INVENTORY_EVENTS, ev("StockReserved"), start + 0.08),
        (topics.SHIPPING_EVENTS, ev("ShipmentScheduled") | {"carrier": carrier}, start + 0.12),
        (topics.PAYMENT_EVENTS, ev("PaymentCaptured") | {"amount": total, "currency": "CNY"}, start + 0.15),
        (topics.ORDER_EVENTS, ev("OrderCompleted") | {"shipment": {"carrier": carrier}}, start + 0.2),
        (topics.NOTIFY_EVENTS, ev("NotificationSent"), start + 0.4),
    ]


def feed(console: Console, orders: int, *, seed: int = 0) -> int:
    """Fold ``orders`` synthetic orders into the console (fold + KPI queue); returns the records fed."""
    rng = random.Random(seed)
    now = time.time()
    offsets: dict[str, int] = {}
    fed = 0
    for i in range(orders):
        start = now - 3600 + 3600 * i / orders
        for topic, value, at in synthetic_order(i, start, rng):
            offset = offsets[topic] = offsets.get(topic, -1) + 1
            console.fold.apply(
                topic=topic, partition=i % 3, offset=offset, timestamp=at, key=value["order_id"], data=value
            )
            console.kpis.add(topic, value, datetime.fromtimestamp(at, tz=UTC))
            fed += 1
    return fed


def timings(client: TestClient, path: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = client.get(path, headers={"X-API-Key": KEY})
        out.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"{path} answered {r.status_code}: {r.text[:200]}")
    return out


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=200, help="requests per endpoint")
    args = parser.parse_args()

    settings = ConsoleSettings(api_keys=SecretStr(KEY))
    console = Console(settings, fold=SagaFold())
    t0 = time.perf_counter()
    records = feed(console, args.orders)
    fold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    console.kpis.refresh()  # folds the queued records into the KPI book, then reports
    kpi_fold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    console.kpis.refresh()  # nothing queued: report() alone, as in each later round
    kpi_report_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    board = console.board()
    print(f"fed {args.orders:,} orders ({records:,} records) into the fold in {fold_s:.1f} s", end="")
    print(f"; process peak RSS {peak / 2**20:.0f} MiB")
    print(
        f"state: {board['in_flight']:,} in flight, {board['stuck']:,} stuck, {board['finished']['COMPLETED']:,} "
        f"completed, {board['finished']['CANCELLED']:,} cancelled"
    )
    print(
        f"KPI book (background thread, never per request): first fold + report {kpi_fold_s:.1f} s, "
        f"then report() of the last hour {kpi_report_s * 1000:.0f} ms per round"
    )
    with TestClient(create_app(settings, console=console, tail=False)) as client:
        timings(client, "/board/fragment", 5)  # warm the templates
        print(f"{'endpoint':22} {'runs':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
        for path in ("/board/fragment", "/", "/api/board"):
            ms = timings(client, path, args.runs)
            print(f"{path:22} {len(ms):>5} {pct(ms, 50):>8.2f} {pct(ms, 95):>8.2f} {max(ms):>8.2f}")


if __name__ == "__main__":
    main()
