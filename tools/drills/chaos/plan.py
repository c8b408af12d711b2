"""The drill's plan and everything drawn from its seed: the orders of every kind, the disruptions and their
moments, the carriers' push modes; and the Result the drill fills in. All randomness is here."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tools.ops import verify
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
from tools.ops.settings import tool_settings

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
