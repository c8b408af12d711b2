"""`fulfil verify` on the running system: a run of orders of every kind passes; a planted violation is caught."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ORDER_API, System, order_body
from tools.ops import evidence, verify

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
KINDS: dict[str, dict[str, Any]] = {
    "ok": {},
    "declined": {"payment__token": "tok_decline"},
    "sold-out": {"lines": [{"sku": "SKU-SOLD-OUT", "quantity": 1, "unit_price": "9.90"}]},
    "undeliverable": {"shipping__address__postal_code": "000000"},
}


async def place_run(system: System, prefix: str) -> list[str]:
    """One order of each kind plus a bouncing one, each settled (terminal, its mail recorded)."""
    ids = []
    for i, (kind, overrides) in enumerate(KINDS.items()):
        oid = f"{prefix}{i}-{kind}"
        r = await system.http.post(f"{ORDER_API}/orders", json=order_body(oid, **overrides))
        assert r.status_code == 202, r.text
        ids.append(oid)
    bounce = f"{prefix}9-bounce"
    body = order_body(bounce)
    body["customer"]["email"] = f"{bounce.lower()}@bounce.test"
    assert (await system.http.post(f"{ORDER_API}/orders", json=body)).status_code == 202
    ids.append(bounce)
    for oid in ids:
        await system.wait_for(oid, until=lambda o: o["status"] in verify.TERMINAL and o["notifications"], timeout=60)
    await asyncio.sleep(2)  # compensations land a moment after the mail
    return ids


def fulfil_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.fulfil.cli", "verify", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


async def test_a_run_of_every_kind_of_order_has_no_violations(system: System) -> None:
    prefix = f"VFY-{uuid.uuid4().hex[:6]}-"
    ids = await place_run(system, prefix)

    report = await evidence.run(prefix=prefix, deadline=timedelta(0))

    assert report.violations == [], report.violations
    assert report.orders == len(ids)
    assert report.statuses == {"COMPLETED": 2, "CANCELLED": 3}
    done = fulfil_verify("--order-prefix", prefix, "--json")
    assert done.returncode == 0, done.stdout + done.stderr


async def test_money_moved_for_an_unknown_order_is_a_violation_and_exits_1(system: System) -> None:
    ghost = f"VFY-{uuid.uuid4().hex[:6]}-ghost"
    ledger = system.mongo["fulfil_payment"]["gateway_ledger"]
    await ledger.insert_one({"_id": f"{ghost}:capture", "op": "capture", "order_id": ghost, "at": datetime.now(UTC)})
    try:
        report = await evidence.run(prefix=ghost, since=datetime.now(UTC) - timedelta(minutes=5))
        done = fulfil_verify("--order-prefix", ghost)
    finally:
        await ledger.delete_one({"_id": f"{ghost}:capture"})

    assert [(v.kind, v.subject) for v in report.violations] == [("unknown_order", ghost)]
    assert done.returncode == 1
    assert "unknown_order" in done.stdout
