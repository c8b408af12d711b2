"""A SIGKILL of any service in the middle of sagas, then a restart: every saga still ends right, nothing twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shared import topics
from tests.e2e.conftest import System, distinct, new_order_id, placed

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RUN = Path(os.environ.get("FULFIL_STATE_DIR", REPO / ".local")) / "run"


def kill_9(service: str) -> None:
    pid = int((RUN / f"{service}.pid").read_text())
    os.killpg(pid, signal.SIGKILL)


def restart_services() -> None:
    subprocess.run(
        [sys.executable, str(REPO / "deploy" / "local" / "stack.py"), "services-up"],
        check=True,
        capture_output=True,
        env={**os.environ, "FULFIL_SKIP_SEED": "1"},
    )


@pytest.mark.parametrize("service", ["order", "payment", "inventory", "shipping", "notify"])
async def test_sigkill_mid_saga_then_restart_finishes_every_saga_once(system: System, service: str) -> None:
    ids = [new_order_id(f"KILL-{service}") for _ in range(6)]
    cancelled_one = ids[0]
    for i, oid in enumerate(ids):
        token = "tok_decline" if oid == cancelled_one else "tok_visa_ok"
        await system.send(placed(oid, payment__token=token), key=oid)
        if i == 2:
            kill_9(service)  # in the middle: some sagas done, some half-way, some not started
    await asyncio.sleep(0.5)
    await asyncio.to_thread(restart_services)

    for oid in ids:
        order = await system.wait_for(oid, status={"COMPLETED", "CANCELLED"}, timeout=60)
        expected = "CANCELLED" if oid == cancelled_one else "COMPLETED"
        assert order["status"] == expected, order
        await system.wait_for(oid, until=lambda o: o["notifications"], timeout=30)
    await asyncio.sleep(1)
    for oid in ids:
        ledger = await system.ledger(oid)
        assert ledger == ({"authorize": 1} if oid == cancelled_one else {"authorize": 1, "capture": 1}), oid
        events = await system.events(oid, topics.INVENTORY_EVENTS, topics.PAYMENT_EVENTS)
        assert distinct(events, "StockReserved") == (0 if oid == cancelled_one else 1)
        assert distinct(events, "PaymentCaptured") == (0 if oid == cancelled_one else 1)
        assert distinct(events, "StockReleased") == 0
        assert len(await system.mails_to(f"{oid.lower()}@example.com")) == 1, oid
