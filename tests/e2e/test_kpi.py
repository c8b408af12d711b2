"""`fulfil kpi` on the running system counts exactly the orders this test placed (selected by their id prefix)."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from tests.e2e.conftest import ORDER_API, System, fulfil, order_body, placed

pytestmark = pytest.mark.e2e

# Each kind of order and its overrides; how each ends is the sandbox behaviour of docs/events.md.
ORDERS: dict[str, dict[str, Any]] = {
    "alipay-next-day": {},  # 2 x 39.90, alipay, next_day -> SF Express
    "wechat-standard": {
        "payment__method": "wechat_pay",
        "shipping__option": "standard",
        "lines": [{"sku": "SKU-BLUE-MUG", "quantity": 1, "unit_price": "25.50"}],
    },
    "card-declined": {"payment__method": "card", "payment__token": "tok_decline"},
    "alipay-sold-out": {"lines": [{"sku": "SKU-SOLD-OUT", "quantity": 1, "unit_price": "9.90"}]},
}


async def test_fulfil_kpi_counts_the_orders_placed_here(system: System) -> None:
    prefix = f"KPI-{uuid.uuid4().hex[:8]}-"
    for kind, overrides in ORDERS.items():
        r = await system.http.post(f"{ORDER_API}/orders", json=order_body(prefix + kind, **overrides))
        assert r.status_code == 202, r.text
    # A storefront publishing the same placement twice (at-least-once): one order, counted once.
    twice = prefix + "kafka-twice"
    record = placed(twice)
    await system.send(record, key=twice)
    await system.send(record, key=twice)
    for oid in [prefix + kind for kind in ORDERS] + [twice]:
        # Terminal and its mail recorded: the terminal event is on Kafka (notify reacted to it).
        await system.wait_for(oid, until=lambda o: o["status"] in {"COMPLETED", "CANCELLED"} and o["notifications"])

    done = fulfil("kpi", "--since", "10m", "--order-prefix", prefix, "--bucket", "minute", "--json")

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert {k: report[k] for k in ("orders_placed", "orders_accepted", "orders_completed", "orders_cancelled")} == {
        "orders_placed": 5,
        "orders_accepted": 5,
        "orders_completed": 3,
        "orders_cancelled": 2,
    }
    assert report["cancellations_by_reason"] == {"out_of_stock": 1, "payment_declined": 1}
    assert (report["payments_authorized"], report["payments_declined"], report["payment_success_rate"]) == (4, 1, 0.8)
    assert report["gmv"] == str(Decimal("79.80") * 3 + Decimal("25.50") + Decimal("9.90"))  # 274.80
    assert report["captured"] == "185.10"  # the three completed orders; the sold-out one was voided
    assert report["cancellation_rate"] == 0.4
    assert report["fulfilment_p50_seconds"] > 0
    methods = report["by_payment_method"]
    assert {m: (f["orders_accepted"], f["gmv"]) for m, f in methods.items()} == {
        "alipay": (3, "169.50"),
        "card": (1, "79.80"),
        "wechat_pay": (1, "25.50"),
    }
    carriers = report["by_carrier"]
    assert {c: f["orders_completed"] for c, f in carriers.items()} == {"JD Logistics": 1, "SF Express": 2, "none": 0}
    assert sum(p["orders_placed"] for p in report["series"]) == 5

    table = fulfil("kpi", "--since", "10m", "--order-prefix", prefix)
    assert table.returncode == 0, table.stdout + table.stderr
    assert "¥274.80" in table.stdout
    assert "per payment method" in table.stdout
