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
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from deploy.local.stack import broker_name, kafka_brokers, kafka_quorum_leader
from shared import topics
from shared.kafka import new_admin, new_producer
from shared.tasks import cancelled
from tools.drills.cpu import run_dir
from tools.ops import evidence, verify
from tools.ops.samples import (
    BOUNCE_DOMAIN,
    DECLINE_TOKEN,
    OK_TOKEN,
    REVIEW_TOKEN,
    SOLD_OUT_SKU,
    UNDELIVERABLE_POSTAL_CODE,
    order_line,
    order_request,
)
from tools.ops.settings import api_headers, tool_settings

REPO = Path(__file__).resolve().parents[3]
STACK = REPO / "deploy" / "local" / "stack.py"
INFRA = ("kafka", "kafka-2", "kafka-3", "ferretdb", "jaeger", "smtp-sink", "provider-sim")
SETTLE = timedelta(seconds=60)
COMPLETION_WAIT = 150.0  # seconds a cancel_completed order may take to complete (outages included)
KINDS = {  # kind -> weight in the stream
    "ok": 28,
    "cancel_race": 22,
    "review": 8,
    "decline": 10,
    "sold_out": 10,
    "undeliverable": 10,
    "bounce": 12,
    # Paid by the customer at the provider's cashier (the simulator): notifications duplicated, late or out of
    # order while services are killed; an abandoned trade expires; a cancellation after payment refunds.
    "cashier": 14,
    "cashier_abandoned": 4,
    "cashier_cancelled": 4,
    # The customer cancels a completed order before its parcel is picked up (the parcel is held at the carrier from
    # before the order is placed): the parcel is called back, the capture refunded, the stock stays committed.
    "cancel_completed": 4,
}
NOTIFY_MODES = (None, "duplicate", "late", "out_of_order")
CARRIERS = ("sf", "jd")  # the carrier simulator's carriers
PUSH_DELAY = 3.0  # seconds the delayed carrier's pushes wait


def push_modes(seed: int) -> dict[str, dict[str, Any]]:
    """The carriers' push modes for the drill (the simulator's ``POST /control/pushes`` bodies, less the order):
    one carrier's pushes duplicated, the other's delayed; an even seed duplicates SF's and delays JD's, an odd one
    the other way round."""
    duplicated, delayed = ("sf", "jd") if seed % 2 == 0 else ("jd", "sf")
    return {
        duplicated: {"carrier": duplicated, "order_id": "*", "mode": "duplicate"},
        delayed: {"carrier": delayed, "order_id": "*", "mode": "delay", "delay_seconds": PUSH_DELAY},
    }


def sim_url() -> str:
    """The provider and carrier simulator (the tools' settings)."""
    return tool_settings().provider_sim_url.rstrip("/")


def service_processes() -> list[str]:
    """Every service process the local stack runs (replicas included), by pid-file name."""
    return sorted(p.stem for p in run_dir().glob("*.pid") if p.stem not in INFRA)


@dataclass(frozen=True)
class Plan:
    seed: int
    duration: float = 240.0  # seconds of order traffic
    rate: float = 5.0  # orders per second
    kills: int = 24
    broker: bool = True
    # A cluster's brokers, each stopped and started in turn (the active controller first) in place of the one
    # broker restart; 0 or 1: no cluster.
    brokers: int = 0
    store: bool = True
    smtp_outage: float = 15.0  # seconds; 0 = none
    order_url: str = field(default_factory=lambda: tool_settings().order_url)
    bootstrap: str | None = None  # None: the tools' settings (KAFKA_BOOTSTRAP_SERVERS, security included)

    @classmethod
    def short(cls, seed: int, **overrides: Any) -> Plan:
        """The ``make test`` version: about a minute of traffic, a few kills, infrastructure left alone."""
        base: dict[str, Any] = {"duration": 45.0, "rate": 3.0, "kills": 5, "broker": False, "store": False}
        return cls(seed=seed, **{**base, "smtp_outage": 0.0, **overrides})


@dataclass(frozen=True)
class OrderSpec:
    at: float  # seconds after the start
    order_id: str
    kind: str
    body: dict[str, Any]
    cancel_after: float | None = None  # seconds after placement (after completion, for ``after_completion``)
    cancel_via_kafka: bool = False
    customer: str | None = None  # at a provider's cashier: "pay" or "abandon"
    notify_mode: str | None = None  # how the simulator delivers the payment's notification
    after_completion: bool = False  # cancelled once COMPLETED, its parcel held at the carriers so it is not picked up


@dataclass(frozen=True)
class Disruption:
    at: float
    action: str  # kill | broker | brokers (one broker of a cluster, in turn) | store | smtp
    down_for: float


@dataclass
class Result:
    seed: int
    prefix: str
    kinds: Counter[str] = field(default_factory=Counter)
    placed: int = 0
    not_placed: list[str] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # disruptions that did not go as planned
    last_recovery_s: float = 0.0
    settled_after_s: float | None = None  # after the last recovery (or the end of traffic, if later)
    unsettled: dict[str, str] = field(default_factory=dict)
    report: verify.Report = field(default_factory=verify.Report)
    pushes: dict[str, str] = field(default_factory=dict)  # carrier -> the push mode it ran under
    cancelled_after_completion: list[str] = field(default_factory=list)  # orders cancelled once seen COMPLETED
    completed: int = 0  # orders COMPLETED at the end
    delivered: int = 0  # of those, the ones whose parcel the order shows delivered

    @property
    def ok(self) -> bool:
        return not self.unsettled and not self.report.violations and not self.not_placed

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "prefix": self.prefix,
            "orders": self.placed,
            "kinds": dict(self.kinds),
            "not_placed": self.not_placed,
            "kills": self.kills,
            "restarts": self.restarts,
            "failures": self.failures,
            "last_recovery_s": round(self.last_recovery_s, 1),
            "settled_after_s": None if self.settled_after_s is None else round(self.settled_after_s, 1),
            "unsettled": self.unsettled,
            "pushes": self.pushes,
            "cancelled_after_completion": len(self.cancelled_after_completion),
            "completed": self.completed,
            "delivered": self.delivered,
            "verify": self.report.as_dict(),
            "ok": self.ok,
        }


# ------------------------------------------------------------------ the schedule (all randomness is here)


def _body(order_id: str, kind: str, rng: random.Random) -> dict[str, Any]:
    lines = [order_line(rng.choice(["SKU-RED-MUG", "SKU-BLUE-MUG"]), rng.randint(1, 3), "39.90")]
    if kind == "sold_out":
        lines.append(order_line(SOLD_OUT_SKU, 1, "99.00"))
    domain = BOUNCE_DOMAIN if kind == "bounce" else "example.com"
    at_cashier = kind.startswith("cashier")  # no token: the customer pays at the provider's cashier
    return order_request(
        order_id,
        lines=lines,
        customer_id=f"c-{order_id}",
        name="Chaos Monkey",
        email=f"{order_id.lower()}@{domain}",
        method=rng.choice(["alipay", "wechat_pay"] if at_cashier else ["alipay", "wechat_pay", "card"]),
        token="" if at_cashier else {"decline": DECLINE_TOKEN, "review": REVIEW_TOKEN}.get(kind, OK_TOKEN),
        option=rng.choice(["next_day", "standard"]),
        postal_code=UNDELIVERABLE_POSTAL_CODE if kind == "undeliverable" else "100080",
    )


def schedule(plan: Plan, prefix: str) -> tuple[list[OrderSpec], list[Disruption]]:
    """The drill's orders and disruptions, from the seed alone (``prefix`` only names the orders)."""
    rng = random.Random(plan.seed)
    names, weights = zip(*KINDS.items(), strict=True)
    orders = []
    for i in range(max(1, int(plan.duration * plan.rate))):
        kind = rng.choices(names, weights)[0]
        order_id = f"{prefix}{i:05d}"
        cancel_after: float | None = None
        if kind == "cancel_race":
            cancel_after = rng.uniform(0.0, 1.5)  # before, around and after the shipment is booked
        elif kind == "review" and rng.random() < 0.5:
            cancel_after = rng.uniform(1.0, 15.0)  # during the 20 s risk-review hold
        elif kind == "cashier_cancelled":
            cancel_after = rng.uniform(0.0, 3.0)  # before or after the customer paid
        elif kind == "cancel_completed":
            cancel_after = rng.uniform(0.0, 1.0)  # after the order was seen COMPLETED
        orders.append(
            OrderSpec(
                at=i / plan.rate,
                order_id=order_id,
                kind=kind,
                body=_body(order_id, kind, rng),
                cancel_after=cancel_after,
                cancel_via_kafka=rng.random() < 0.5,
                customer=None if not kind.startswith("cashier") else "abandon" if kind.endswith("abandoned") else "pay",
                notify_mode=rng.choice(NOTIFY_MODES) if kind.startswith("cashier") else None,
                after_completion=kind == "cancel_completed",
            )
        )
    span = (0.05 * plan.duration, 0.85 * plan.duration)
    disruptions = [Disruption(rng.uniform(*span), "kill", rng.uniform(0.0, 2.0)) for _ in range(plan.kills)]
    if plan.brokers > 1:
        disruptions += [
            Disruption((0.15 + 0.6 * k / plan.brokers) * plan.duration, "brokers", rng.uniform(3.0, 8.0))
            for k in range(plan.brokers)
        ]
    elif plan.broker:
        disruptions.append(Disruption(0.3 * plan.duration, "broker", rng.uniform(2.0, 6.0)))
    if plan.store:
        disruptions.append(Disruption(0.55 * plan.duration, "store", rng.uniform(2.0, 6.0)))
    if plan.smtp_outage > 0:
        disruptions.append(Disruption(0.7 * plan.duration, "smtp", plan.smtp_outage))
    return orders, sorted(disruptions, key=lambda d: d.at)


# ------------------------------------------------------------------ processes


def stack_sync(verb: str, name: str, timeout: float = 150) -> bool:
    """``deploy/local/stack.py start|stop NAME``, blocking; True when it succeeded."""
    try:
        done = subprocess.run(
            [sys.executable, str(STACK), verb, name],
            capture_output=True,
            timeout=timeout,
            check=False,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


async def stack(verb: str, name: str) -> bool:
    return await asyncio.to_thread(stack_sync, verb, name)


def cluster_size() -> int:
    """How many brokers the local stack's Kafka runs (1: no cluster)."""
    return kafka_brokers()


async def in_sync(bootstrap: str | None, *, within: float) -> bool:
    """Whether, within ``within`` seconds, every partition of the saga's topics has all its replicas in sync."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        admin = new_admin(tool_settings(bootstrap), request_timeout_ms=5000)
        try:
            await admin.start()
            described = await admin.describe_topics(list(topics.ALL_TOPICS))
            if all(
                len(p["isr"]) == len(p["replicas"])
                for t in described
                if t.get("error_code", 0) == 0
                for p in t["partitions"]
            ):
                return True
        except Exception:  # noqa: S110  (a broker is still starting: ask again)
            pass
        finally:
            await admin.close()
        await asyncio.sleep(2)
    return False


class Monkey:
    """Carries out the disruptions; remembers what it stopped so that :meth:`heal` can start it again."""

    def __init__(self, plan: Plan, result: Result, say: Callable[[str], None]) -> None:
        self.rng = random.Random(plan.seed ^ 0x5EED)  # its own stream: the targets do not shift the orders
        self.result, self.say = result, say
        self.touched: list[str] = []
        self.brokers_stopped: list[str] = []
        self.plan = plan
        self.t0 = time.monotonic()

    def _touch(self, name: str) -> None:
        if name not in self.touched:
            self.touched.append(name)

    async def _restart(self, name: str, down_for: float) -> None:
        await asyncio.sleep(down_for)
        for _attempt in range(3):
            if await stack("start", name):
                self.result.restarts.append(name)
                self.result.last_recovery_s = time.monotonic() - self.t0
                return
            await asyncio.sleep(2)
        self.result.failures.append(f"{name} did not come back (left for the final heal)")

    async def do(self, d: Disruption) -> None:
        if d.action == "kill":
            candidates = service_processes()
            if not candidates:
                self.result.failures.append("no service process to kill")
                return
            # The stack's own pid helpers, imported late: deploy/ is not in the image, and every `fulfil` imports this.
            from deploy.local.stack import pid_alive, running_pid

            name = self.rng.choice(candidates)
            pid = running_pid(run_dir() / f"{name}.pid")
            self._touch(name)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self.result.kills.append(name)
                self.say(f"SIGKILL {name} (pid {pid})")
                for _ in range(50):
                    if not pid_alive(pid):
                        break
                    await asyncio.sleep(0.1)
            else:
                self.result.failures.append(f"{name} was not running when its kill came")
            await self._restart(name, d.down_for)
            return
        if d.action == "brokers":
            await self.stop_a_broker(d.down_for)
            return
        name = {"broker": "kafka", "store": "ferretdb", "smtp": "smtp-sink"}[d.action]
        self._touch(name)
        self.say(f"stopping {name} for {d.down_for:.0f}s")
        if not await stack("stop", name):
            self.result.failures.append(f"could not stop {name}")
        await self._restart(name, d.down_for)

    async def stop_a_broker(self, down_for: float) -> None:
        """Stop one broker of the cluster (the active controller while it has not been stopped, then the others in
        turn), start it again, and wait until every partition is back on all its replicas before the next stop: a
        rolling restart, as an operator does one, under load."""
        leader = await asyncio.to_thread(kafka_quorum_leader)
        names = [broker_name(k) for k in range(1, self.plan.brokers + 1)]
        left = [n for n in names if n not in self.brokers_stopped] or names
        name = broker_name(leader) if leader is not None and broker_name(leader) in left else left[0]
        self.brokers_stopped.append(name)
        self._touch(name)
        role = " (the active controller)" if leader is not None and name == broker_name(leader) else ""
        self.say(f"stopping {name}{role} for {down_for:.0f}s")
        if not await stack("stop", name):
            self.result.failures.append(f"could not stop {name}")
        await self._restart(name, down_for)
        if not await in_sync(self.plan.bootstrap, within=90):
            self.result.failures.append(f"partitions still under-replicated 90s after {name} came back")

    def heal(self) -> None:
        """Start everything the drill touched (infrastructure first); safe to call more than once."""
        order = [n for n in INFRA if n in self.touched] + [n for n in self.touched if n not in INFRA]
        for name in order:
            if not stack_sync("start", name):
                self.result.failures.append(f"could not start {name} again: start it by hand")


# ------------------------------------------------------------------ traffic


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


# ------------------------------------------------------------------ the drill


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
