"""``fulfil chaos`` / ``make chaos``: a chaos drill against the running local stack, then ``fulfil verify``.

A steady stream of orders of every sandbox kind (cancellations racing shipments, risk reviews, declines, sold-out,
undeliverable, bouncing mail, customers cancelling completed orders) while service processes are SIGKILLed at random
moments and restarted, the broker and the store are restarted once and the SMTP server is stopped for a while.
Afterwards every order must be terminal within ``SETTLE`` of the last recovery, and ``fulfil verify`` must find
nothing for the drill's orders.

The carriers' route pushes are in the loop, never clean: for the whole drill the carrier simulator duplicates every
push of one carrier and delays every push of the other by ``PUSH_DELAY`` seconds; which carrier gets which
alternates with the seed's parity (:func:`push_modes`), so both carriers meet both over runs and a seed replays its
own. The modes are set back to ``normal`` when the drill ends, also on a failure or Ctrl-C. A completed order is
settled as before -- the drill does not wait for parcels to be delivered -- but the result counts how many of the
completed orders show their parcel delivered by the end.

Everything random comes from one seed, printed first: the same seed replays the same orders and the same disruptions
at the same moments (the order ids get a fresh suffix, so a repeat does not collide with the first run).
Service processes are found from ``.local/run/*.pid`` (infrastructure excluded), so replicas are included. Whatever
the drill stops is started again before it returns, also on Ctrl-C or an error.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx

from shared.kafka import new_producer
from shared.tasks import cancelled
from tools.drills.chaos.monkey import Monkey, service_processes
from tools.drills.chaos.plan import Disruption, OrderSpec, Plan, Result, push_modes, schedule, sim_url
from tools.drills.chaos.traffic import Traffic
from tools.ops import evidence, verify
from tools.ops.settings import api_headers, tool_settings

SETTLE = timedelta(seconds=60)


async def _views(http: Any, order_url: str, ids: list[str]) -> dict[str, dict[str, Any] | None]:
    gate = asyncio.Semaphore(32)

    async def one(order_id: str) -> tuple[str, dict[str, Any] | None]:
        async with gate:
            try:
                r = await http.get(f"{order_url}/orders/{order_id}")
            except Exception:
                return order_id, None
        return order_id, (r.json() if r.status_code == 200 else None)

    return dict(await asyncio.gather(*(one(i) for i in ids)))


def _settled(view: dict[str, Any] | None, *, cancelled_after_completion: bool = False) -> bool:
    """Terminal, and the customer's mail (or its bounce) about that outcome recorded: nothing is left to happen.
    A completed order is settled without waiting for its parcel; one the customer cancelled after completion only
    once CANCELLED (its order_completed mail is not the last)."""
    if view is None or view.get("status") not in verify.TERMINAL:
        return False
    if view["status"] == "REJECTED":
        return True
    if cancelled_after_completion and view["status"] != "CANCELLED":
        return False
    want = verify.OUTCOME_KIND[view["status"]]
    return any(n.get("kind") == want for n in view.get("notifications") or [])


def deliveries(views: dict[str, dict[str, Any] | None]) -> tuple[int, int]:
    """(orders COMPLETED, of those the ones whose delivery shows DELIVERED), from the order views."""
    completed = [v for v in views.values() if v is not None and v.get("status") == "COMPLETED"]
    return len(completed), sum(1 for v in completed if (v.get("delivery") or {}).get("status") == "DELIVERED")


async def _push_mode(http: Any, body: dict[str, Any]) -> str:
    """Set a carrier's push mode at the simulator: '' when it took it, else why not."""

    try:
        r = await http.post(f"{sim_url()}/control/pushes", json=body)
    except httpx.HTTPError as e:
        return f"the carrier simulator did not answer ({type(e).__name__})"
    return "" if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:120]}"


async def set_pushes(http: Any, seed: int, result: Result) -> None:
    """Every push of one carrier duplicated, of the other delayed (:func:`push_modes`), for all orders."""
    for carrier, body in push_modes(seed).items():
        why = await _push_mode(http, body)
        if why:
            result.failures.append(f"{carrier} pushes not {body['mode']} (not in the loop): {why}")
        else:
            delay = body.get("delay_seconds")
            result.pushes[carrier] = body["mode"] + (f" {delay:g}s" if delay else "")


async def restore_pushes(http: Any, result: Result) -> None:
    """Every carrier whose push mode the drill set back to ``normal``."""
    for carrier in result.pushes:
        why = await _push_mode(http, {"carrier": carrier, "order_id": "*", "mode": "normal"})
        if why:
            result.failures.append(
                f"{carrier} pushes not set back to normal ({why}): POST /control/pushes "
                f'{{"carrier": "{carrier}", "order_id": "*", "mode": "normal"}} by hand'
            )


async def drill(plan: Plan, say: Callable[[str], None] = print) -> Result:
    """Run the drill against the local stack and verify its orders; every disruption is healed before returning."""
    prefix = f"CHAOS{plan.seed}-{secrets.token_hex(2).upper()}-"
    result = Result(seed=plan.seed, prefix=prefix)
    orders, disruptions = schedule(plan, prefix)
    say(f"chaos seed {plan.seed} (repeat with --seed {plan.seed}); orders {prefix}*")
    say(
        f"{len(orders)} orders over {plan.duration:.0f}s; {plan.kills} kills of {', '.join(service_processes())}"
        f"{f'; each of {plan.brokers} brokers stopped in turn' if plan.brokers > 1 else ''}"
        f"{'; broker restart' if plan.broker and plan.brokers < 2 else ''}{'; store restart' if plan.store else ''}"
        f"{f'; SMTP down {plan.smtp_outage:.0f}s' if plan.smtp_outage else ''}"
    )
    monkey = Monkey(plan, result, say)
    producer = new_producer(tool_settings(plan.bootstrap), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        async with httpx.AsyncClient(timeout=10, headers=api_headers()) as http:
            await set_pushes(http, plan.seed, result)
            say(f"carrier pushes: {', '.join(f'{c} {m}' for c, m in result.pushes.items()) or 'not in the loop'}")
            try:
                await _run(plan, orders, disruptions, http, producer, monkey, result, say)
            finally:
                await restore_pushes(http, result)
    finally:
        monkey.heal()
        await producer.stop()
    return result


async def _run(
    plan: Plan,
    orders: list[OrderSpec],
    disruptions: list[Disruption],
    http: Any,
    producer: Any,
    monkey: Monkey,
    result: Result,
    say: Callable[[str], None],
) -> None:
    """Traffic and disruptions, then the wait for every order to settle, then ``fulfil verify``."""
    t0 = monkey.t0 = time.monotonic()

    async def disrupt() -> None:
        for d in disruptions:
            await asyncio.sleep(max(0.0, t0 + d.at - time.monotonic()))
            await monkey.do(d)

    async def progress() -> None:
        while True:
            await asyncio.sleep(10)
            say(
                f"t={time.monotonic() - t0:5.0f}s placed={result.placed}/{len(orders)} "
                f"kills={len(result.kills)}/{plan.kills} restarts={len(result.restarts)}"
            )

    ticker = asyncio.create_task(progress())
    try:
        await asyncio.gather(Traffic(plan, http, producer, result).run(orders, t0), disrupt())
    finally:
        await cancelled(ticker)
    monkey.heal()
    traffic_end = time.monotonic() - t0
    start = max(result.last_recovery_s, traffic_end)
    give_up = t0 + start + SETTLE.total_seconds()
    ids = [o.order_id for o in orders]
    reopened = set(result.cancelled_after_completion)

    def settled(order_id: str, views: dict[str, dict[str, Any] | None]) -> bool:
        return _settled(views.get(order_id), cancelled_after_completion=order_id in reopened)

    views: dict[str, dict[str, Any] | None] = {}
    while True:
        views = await _views(http, plan.order_url, ids)
        pending = [i for i in ids if not settled(i, views)]
        if not pending:
            result.settled_after_s = time.monotonic() - t0 - start
            break
        if time.monotonic() > give_up:
            break
        await asyncio.sleep(2)
    result.unsettled = {
        i: f"{(views.get(i) or {}).get('status', 'unknown')} / {(views.get(i) or {}).get('stage')}"
        for i in ids
        if not settled(i, views)
    }
    say(f"settled: {len(ids) - len(result.unsettled)}/{len(ids)}; verifying {result.prefix}*")
    for attempt in range(3):  # compensations finish a moment after the outcome: let them land
        result.report = await evidence.run(prefix=result.prefix, deadline=timedelta(0))
        if not result.report.violations or attempt == 2:
            break
        await asyncio.sleep(5)
    # Parcels move on after their orders settled: how many completed orders show theirs delivered by now.
    result.completed, result.delivered = deliveries(await _views(http, plan.order_url, ids))
