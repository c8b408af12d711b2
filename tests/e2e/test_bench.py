"""The benchmark keeps working: a ten-second smoke of ``fulfil bench`` on the running system.

Figures are printed, never asserted (timings on a shared machine are noisy); only the result's shape is checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from shared import topics
from shared.events import decode
from shared.events.storefront import OrderPlaced
from tests.e2e.conftest import System
from tools.drills.bench.plan import RECORDS_CONSUMED_PER_ORDER, RECORDS_PRODUCED_PER_ORDER, SAGA_FLOW, OrderMix, Plan
from tools.ops import samples

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_the_ceiling_moves_what_a_happy_path_order_produces_and_consumes() -> None:
    # The bench's orders carry a token: no provider notification is part of their saga; parcel tracking comes
    # after an order completes.
    assert set(SAGA_FLOW) == set(topics.MAIN_TOPICS) - {
        topics.PAYMENT_NOTIFICATIONS,
        topics.SHIPPING_NOTIFICATIONS,
    }
    assert (RECORDS_PRODUCED_PER_ORDER, RECORDS_CONSUMED_PER_ORDER) == (8, 18)


def test_bench_orders_are_valid_placements_with_the_documented_mix() -> None:
    mix = OrderMix(Plan.search(seed=7), "T1")

    orders = [mix.next() for _ in range(2000)]

    kinds = Counter(kind for _, _, kind in orders)
    for order_id, value, kind in orders:
        event = decode(topics.STOREFRONT_ORDERS, value)
        assert isinstance(event, OrderPlaced)
        assert event.order_id == order_id
        assert order_id.startswith("BENCH-T1-")
        assert 1 <= len(event.lines) <= 5
        assert (event.payment.token == "tok_decline") == (kind == "decline")
        assert any(line.sku == samples.SOLD_OUT_SKU for line in event.lines) == (kind == "sold_out")
    assert 20 < kinds["decline"] < 100
    assert 10 < kinds["sold_out"] < 80
    assert len({order_id for order_id, _, _ in orders}) == len(orders)


async def test_smoke_bench_reports_throughput_latency_ceiling_and_a_chart(system: System, tmp_path: Path) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": system.endpoints.kafka}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.fulfil.cli",
        "bench",
        "--smoke",
        "--yes",
        "--json",
        "--out",
        str(tmp_path),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, stderr.decode()[-3000:]

    result = json.loads(stdout)
    print("\n" + json.dumps({k: result[k] for k in ("summary", "ceiling", "ratio_to_ceiling")}, indent=2))
    summary, ceiling = result["summary"], result["ceiling"]
    assert result["mode"] == "smoke"
    assert summary["orders_placed"] > 0
    assert 0 <= summary["orders_completed"] <= summary["orders_placed"]
    ended = summary["orders_completed"] + summary["orders_cancelled"] + summary["orders_rejected"]
    assert ended + summary["orders_not_ended"] == summary["orders_placed"]
    for key in ("latency_completed_ms", "latency_email_ms"):
        assert set(summary[key]) == {"count", "p50", "p90", "p99", "max"}
    assert [p["name"] for p in result["phases"]] == ["smoke"]
    # The local stack has pid files: the CPU of every service, the store and the broker is accounted for.
    assert {"order", "payment", "inventory", "shipping", "notify", "ferretdb", "kafka", "bench"} <= set(
        result["phases"][0]["cpu_pct"]
    )
    assert ceiling["records_produced"] == 8 * ceiling["orders"] > 0
    assert ceiling["records_consumed"] == 18 * ceiling["orders"]
    assert ceiling["records_per_s"] > 0
    assert isinstance(result["ratio_to_ceiling"], float)
    assert result["timeline"], "the run keeps a timeline for the chart"
    assert Path(result["json"]).is_file()
    assert Path(result["chart"]).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
