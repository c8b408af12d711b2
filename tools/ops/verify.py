"""``fulfil verify``: check the saga's invariants against what actually happened.

Evidence comes from every side the services touch: the topics (read from the beginning without a consumer group),
the order API, the sandbox payment provider's ledger (``fulfil_payment.gateway_ledger``), the carriers' own record
of their parcels -- the carrier simulator's (``GET /control/parcels/sf`` and ``/jd``) merged with the sandbox
carrier's bookings (``fulfil_shipping.carrier_bookings``), else the shipping events --, the SMTP sink and the stock
levels. :func:`analyse` is pure -- evidence in, violations out -- so each invariant is unit-tested on small made-up
histories; :func:`gather` collects the evidence from a running system.

Invariants (GitHub issue #9, and the carriers' parcel tracking):

* every order is terminal, or younger than its deadline;
* COMPLETED <=> exactly one capture and one booking, live at the carrier, no void, refund, call-back or
  interception;
* CANCELLED after authorisation <=> exactly one void or one refund, no live booking (and its stock released); a
  parcel the carrier had picked up is not live once the shipping service has intercepted it (``ShipmentIntercepted``:
  it is coming back), but an interception of a parcel the carrier shows never picked up is no excuse;
* completed, then cancelled (the customer cancels until the parcel is delivered): only an ``OrderCancelled`` with
  reason ``customer_request`` decided after the ``OrderCompleted``, and then the order API says CANCELLED, the money
  was captured once and refunded once (no void), its one parcel was called back or intercepted, its stock stays
  committed (reserved once, never released: the units count as shipped) and the customer got one order_completed
  and one order_cancelled mail; any other pair of outcomes is a conflict;
* a cancellation refused because the parcel was delivered (``parcel_already_delivered``) needs a delivered parcel,
  and no cancellation may follow it;
* a COMPLETED order whose parcel the carrier shows delivered has the order view's delivery DELIVERED, once
  ``delivery_grace`` has passed since the carrier's delivery;
* stock is conserved per SKU (``received = available + reserved + shipped``) and never negative;
* exactly one e-mail per terminal outcome (counted by ``Message-ID``);
* no event, money movement, booking or mail for an unknown order.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import topics

TERMINAL = {"COMPLETED", "CANCELLED", "REJECTED"}
HOLD_GRACE = timedelta(seconds=30)  # an ended order's release or commit of its stock may take this long
OUTCOME_KIND = {"COMPLETED": "order_completed", "CANCELLED": "order_cancelled"}
# The notify service's subjects (services/notify/domain.py); shared/ may not import a service, so matched here.
SUBJECT = re.compile(r"^Your order (?P<order>[A-Za-z0-9._-]+) (?P<what>is on its way|was cancelled)$")
SUBJECT_KIND = {"is on its way": "order_completed", "was cancelled": "order_cancelled"}
SERVICE_TOPICS = frozenset(topics.MAIN_TOPICS) - {topics.STOREFRONT_ORDERS}
DEFAULT_DEADLINE = timedelta(seconds=300 + 30)  # ORDER_DEADLINE_SECONDS plus the scanner's interval and a margin
# A delivery the carrier records reaches the order view through a push (retried after 5 s and 15 s) or, when every
# push was lost, the shipping service's route query (60 s after booking, then backing off): three minutes is ample.
DEFAULT_DELIVERY_GRACE = timedelta(seconds=180)
CARRIERS = ("sf", "jd")  # the carrier simulator's carriers (GET /control/parcels/{carrier})


@dataclass(frozen=True)
class Fact:
    """One event as read from a topic (the record's time, not the event's ``occurred_at``)."""

    topic: str
    event_type: str
    order_id: str
    event_id: str
    at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Violation:
    kind: str
    subject: str  # the order id, or the SKU for stock checks
    detail: str


@dataclass
class Evidence:
    """Everything :func:`analyse` looks at, already narrowed to the run being checked."""

    facts: list[Fact]
    orders: Mapping[str, Mapping[str, Any] | None] | None  # order API views (None: unknown there); None: not asked
    ledger: Sequence[Mapping[str, Any]]  # gateway_ledger documents: {_id, op, order_id, outcome?, ...}
    # The carriers' record: {order_id, status: booked|cancelled, tracking_number} and, from the carrier simulator,
    # {carrier, milestone: None (not picked up) | PICKED_UP | ... | DELIVERED, delivered_at}. None: none readable.
    bookings: Sequence[Mapping[str, Any]] | None
    mails: Sequence[Mapping[str, Any]]  # SMTP sink summaries: {ID, MessageID, To: [{Address}], Subject}
    stock: Mapping[str, Mapping[str, Any]]  # sku -> GET /stock/{sku}
    now: datetime
    deadline: timedelta = DEFAULT_DEADLINE
    complete: bool = False  # the whole history is in scope (no filter): stock can be matched exactly
    notes: list[str] = field(default_factory=list)  # what could not be gathered
    # Orders paid at a provider's cashier: our record beside the provider's (GET /payments/{id}/provider).
    providers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # A carrier's record could not be read (the simulator did not answer): an order no record knows is judged from
    # the shipping events instead of as a parcel missing at its carrier.
    bookings_partial: bool = False
    delivery_grace: timedelta = DEFAULT_DELIVERY_GRACE
    # sku -> {order id: units held} (GET /stock/{sku}/holds); None: not readable, so not checked per order.
    holds: Mapping[str, Mapping[str, int]] | None = None


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def orders(self) -> int:
        return sum(self.statuses.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "orders": self.orders,
            "statuses": self.statuses,
            "violations": [asdict(v) for v in self.violations],
            "notes": self.notes,
        }


@dataclass
class _Order:
    order_id: str
    facts: list[Fact] = field(default_factory=list)
    ledger: list[Mapping[str, Any]] = field(default_factory=list)
    bookings: list[Mapping[str, Any]] = field(default_factory=list)
    mails: list[Mapping[str, Any]] = field(default_factory=list)

    def of(self, *event_types: str) -> list[Fact]:
        """Distinct events of these types (a relay may publish one event twice)."""
        seen: dict[str, Fact] = {}
        for f in self.facts:
            if f.event_type in event_types:
                seen.setdefault(f.event_id, f)
        return list(seen.values())

    def ops(self, op: str, **where: Any) -> int:
        return sum(1 for d in self.ledger if d.get("op") == op and all(d.get(k) == v for k, v in where.items()))


def _lines(fact: Fact) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for ln in fact.data.get("lines") or []:
        out[str(ln["sku"])] += int(ln["quantity"])
    return dict(out)


def _status(o: _Order, view: Mapping[str, Any] | None) -> str:
    if view is not None:
        return str(view.get("status", "PENDING"))
    if o.of("OrderCompleted"):
        return "COMPLETED"
    if o.of("OrderCancelled"):
        return "CANCELLED"
    if o.of("OrderRejected"):
        return "REJECTED"
    return "PENDING"


def _recipient(o: _Order) -> str:
    for f in o.of("OrderPlaced", "OrderAccepted"):
        customer = f.data.get("customer") or {}
        if customer.get("email"):
            return str(customer["email"]).lower()
    return ""


def _mail_kind(mail: Mapping[str, Any]) -> str | None:
    m = SUBJECT.match(str(mail.get("Subject", "")).strip())
    return SUBJECT_KIND[m.group("what")] if m else None


def mail_order(mail: Mapping[str, Any]) -> str | None:
    """The order a notify mail is about, from its subject; None for any other mail."""
    m = SUBJECT.match(str(mail.get("Subject", "")).strip())
    return m.group("order") if m else None


def _mail_identity(mail: Mapping[str, Any]) -> str:
    to = ",".join(sorted(str(t.get("Address", "")).lower() for t in mail.get("To") or []))
    return str(mail.get("MessageID") or "") or f"{to}|{mail.get('Subject', '')}"


def analyse(ev: Evidence) -> Report:
    """Every violation of the invariants in the evidence, with notes on checks that could not be made."""
    report = Report(notes=list(ev.notes))
    v = report.violations
    orders: dict[str, _Order] = {}

    def order(order_id: str) -> _Order:
        return orders.setdefault(order_id, _Order(order_id))

    for f in ev.facts:
        order(f.order_id).facts.append(f)
    for d in ev.ledger:
        order(str(d.get("order_id"))).ledger.append(d)
    for b in ev.bookings or []:
        order(str(b.get("order_id"))).bookings.append(b)
    for m in ev.mails:
        if (oid := mail_order(m)) is not None:
            order(oid).mails.append(m)
    if ev.orders is None:
        report.notes.append("order API not consulted: statuses taken from order.events")
    if ev.bookings is None:
        report.notes.append("no carrier bookings to read: bookings counted from shipping.events")

    held: dict[str, int] = defaultdict(int)  # units the events say are still held, per SKU
    shipped: dict[str, int] = defaultdict(int)
    same_message_resent = 0
    for oid in sorted(orders):
        o = orders[oid]
        view = ev.orders.get(oid) if ev.orders is not None else None
        placed = o.of("OrderPlaced")
        if not placed:
            service_side = [f for f in o.facts if f.topic in SERVICE_TOPICS] or o.ledger or o.bookings or o.mails
            if view is None and service_side:  # a storefront's message about an unknown order is its own mistake
                where = sorted({f.topic for f in o.facts})
                where += [
                    name
                    for name, seen in (("payment ledger", o.ledger), ("carrier", o.bookings), ("smtp", o.mails))
                    if seen
                ]
                v.append(Violation("unknown_order", oid, f"never placed, yet seen in: {', '.join(where)}"))
            continue  # placed before the checked range: out of scope
        status = _status(o, view)
        report.statuses[status] = report.statuses.get(status, 0) + 1
        placed_at = min(f.at for f in placed)
        if ev.orders is not None and view is None:
            if ev.now - placed_at > timedelta(seconds=30):
                v.append(Violation("order_lost", oid, "placed on storefront.orders, unknown to the order API"))
            continue

        reopened = _check_outcome(ev, o, status, placed_at, v)
        _check_money_and_shipment(ev, o, status, reopened, v)
        _check_stock_of(o, status, reopened, held, shipped, v)
        if status == "COMPLETED" and view is not None:
            v.extend(_delivery_followed(oid, view, o.bookings, now=ev.now, grace=ev.delivery_grace))

        same_message_resent += _check_mail(o, status, reopened, v)
    if same_message_resent:
        report.notes.append(
            f"{same_message_resent} mail(s) delivered again with the same Message-ID (the documented crash window)"
        )

    _check_stock(ev, held, shipped, report)
    ended_at = {oid: max(f.at for f in o.facts) for oid, o in orders.items() if o.of("OrderPlaced")}
    _check_holds_of_ended_orders(ev, ended_at, report)
    return report


def _check_outcome(ev: Evidence, o: _Order, status: str, placed_at: datetime, v: list[Violation]) -> bool:
    """Terminal in time, with one outcome that agrees with the order API; whether the customer cancelled it once
    completed (and it is CANCELLED now)."""
    oid = o.order_id
    if status not in TERMINAL and ev.now - placed_at > ev.deadline:
        last = max(o.facts, key=lambda f: f.at)
        age = (ev.now - placed_at).total_seconds()
        v.append(Violation("not_terminal", oid, f"{status} after {age:.0f}s; last event {last.event_type}"))
    completed, cancelled = o.of("OrderCompleted"), o.of("OrderCancelled")
    reopened = cancelled_after_completion(completed, cancelled)  # the customer cancelled a completed order
    if completed and cancelled and not reopened:
        v.append(
            Violation(
                "conflicting_outcomes",
                oid,
                "both OrderCompleted and OrderCancelled were emitted (not a customer's cancellation after the "
                "completion: reasons " + ", ".join(sorted(str(f.data.get("reason")) for f in cancelled)) + ")",
            )
        )
    if len(completed) > 1 or len(cancelled) > 1:
        v.append(Violation("duplicate_outcome", oid, f"{len(completed) + len(cancelled)} distinct outcome events"))
    if (status == "COMPLETED" and cancelled) or (status == "CANCELLED" and completed and not reopened):
        v.append(Violation("conflicting_outcomes", oid, f"order API says {status}, the events say otherwise"))
    elif status in OUTCOME_KIND and not (completed or cancelled):
        v.append(Violation("outcome_not_published", oid, f"{status} in the order API, no outcome event"))
    reopened = reopened and status == "CANCELLED"
    v.extend(_refusals(o, cancelled))
    return reopened


def _check_money_and_shipment(ev: Evidence, o: _Order, status: str, reopened: bool, v: list[Violation]) -> None:
    """What the payment ledger, the provider and the carrier say was done with the money and the parcel."""
    oid = o.order_id
    authorised = o.ops("authorize", outcome="approved")
    captures, voids, refunds = o.ops("capture"), o.ops("void"), o.ops("refund")
    booked = {str(f.data.get("tracking_number")) for f in o.of("ShipmentScheduled")}
    called_back = {str(f.data.get("tracking_number")) for f in o.of("ShipmentCancelled")}
    intercepted = {str(f.data.get("tracking_number")) for f in o.of("ShipmentIntercepted")}
    undone = called_back | intercepted  # what the shipping service says it did about the parcel
    live = booked - called_back
    if ev.bookings is not None and (o.bookings or not ev.bookings_partial):
        # The carrier's own record decides what is still live.
        booked |= {str(b.get("tracking_number")) for b in o.bookings}
        called_back = {str(b.get("tracking_number")) for b in o.bookings if b.get("status") == "cancelled"}
        live = {str(b.get("tracking_number")) for b in o.bookings if b.get("status") == "booked"}
        # An interception is no excuse for a parcel the carrier shows never picked up: it could be called back.
        never_picked_up = {
            str(b.get("tracking_number"))
            for b in o.bookings
            if b.get("status") == "booked" and "milestone" in b and b["milestone"] is None
        }
        returning = intercepted - never_picked_up
    else:
        returning = intercepted
    money = f"authorised={authorised} captures={captures} voids={voids} refunds={refunds}"
    ship = f"bookings={len(booked)} live={len(live)} call-backs={len(called_back)} interceptions={len(intercepted)}"
    at_provider = ev.providers.get(oid)
    if at_provider is not None:
        v.extend(_provider_money(oid, status, at_provider, refunded=reopened))
    if status == "COMPLETED":
        if at_provider is None and (captures != 1 or voids or refunds):
            v.append(Violation("completed_payment", oid, f"want exactly one capture, no void/refund: {money}"))
        if len(booked) != 1 or len(live) != 1 or called_back or intercepted:
            v.append(
                Violation("completed_shipment", oid, f"want exactly one booking, no call-back/interception: {ship}")
            )
    elif reopened and at_provider is None:
        if captures != 1 or refunds != 1 or voids:
            v.append(
                Violation("cancelled_payment", oid, f"completed, then cancelled: want one capture, one refund: {money}")
            )
    elif status == "CANCELLED" and at_provider is None:
        if authorised and voids + refunds != 1:
            v.append(Violation("cancelled_payment", oid, f"want exactly one void or one refund: {money}"))
        elif captures != refunds or voids > 1:
            v.append(Violation("cancelled_payment", oid, f"captured money kept, or undone twice: {money}"))
    if status == "CANCELLED":
        if live - returning:
            v.append(Violation("cancelled_shipment", oid, f"a booking is still live: {ship}"))
        if reopened and (len(booked) != 1 or not booked <= undone):
            v.append(
                Violation(
                    "cancelled_shipment",
                    oid,
                    f"completed, then cancelled: want its one parcel called back or intercepted: {ship}",
                )
            )
    elif status == "REJECTED" and (o.ledger or booked):
        v.append(Violation("rejected_effects", oid, f"a rejected order moved money or goods: {money} {ship}"))


def _check_stock_of(
    o: _Order,
    status: str,
    reopened: bool,
    held: dict[str, int],
    shipped: dict[str, int],
    v: list[Violation],
) -> None:
    """The order's stock as the events tell it; adds what it still holds or has shipped to ``held``/``shipped``."""
    oid = o.order_id
    reserved = o.of("StockReserved")
    released = o.of("StockReleased")
    if status == "COMPLETED" or reopened:  # a completed order's stock is committed, cancelled after or not
        if not reserved or released:
            which = "cancelled_stock" if reopened else "completed_stock"
            what = "completed, then cancelled (want it committed): " if reopened else ""
            v.append(Violation(which, oid, f"{what}reserved {len(reserved)}x, released {len(released)}x"))
        for r in reserved[:1]:
            for sku, qty in _lines(r).items():
                shipped[sku] += qty
    elif status == "CANCELLED" and reserved and not released:
        v.append(Violation("cancelled_stock", oid, "stock was reserved and never released"))
    elif status not in TERMINAL and reserved and not released:
        for sku, qty in _lines(reserved[0]).items():
            held[sku] += qty


def _check_mail(o: _Order, status: str, reopened: bool, v: list[Violation]) -> int:
    """The outcome mails: one of each wanted kind, to the customer; how many were resent with the same Message-ID."""
    oid = o.order_id
    same_message_resent = 0
    wants = set(OUTCOME_KIND.values()) if reopened else {OUTCOME_KIND[status]} if status in OUTCOME_KIND else set()
    to = _recipient(o)
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for m in o.mails:
        kind = _mail_kind(m)
        if kind is not None:
            by_kind[kind][_mail_identity(m)] += 1
        recipients = {str(t.get("Address", "")).lower() for t in m.get("To") or []}
        if to and recipients != {to}:
            v.append(Violation("mail_wrong_recipient", oid, f"{m.get('Subject')!r} went to {sorted(recipients)}"))
    for kind, copies in by_kind.items():
        same_message_resent += sum(n - 1 for n in copies.values())
        if kind not in wants and status in TERMINAL:
            v.append(Violation("mail_wrong_outcome", oid, f"{kind} mail for a {status} order"))
    for want in sorted(wants):
        distinct = len(by_kind.get(want, ()))
        bounce = to.endswith("@bounce.test")
        if bounce and distinct:
            v.append(Violation("mail_duplicate", oid, f"{distinct} {want} mail(s) to a bouncing address"))
        elif not bounce and distinct == 0:
            v.append(Violation("mail_missing", oid, f"no {want} mail"))
        elif distinct > 1:
            v.append(Violation("mail_duplicate", oid, f"{distinct} different {want} mails"))
    return same_message_resent


def _check_holds_of_ended_orders(ev: Evidence, last_event_at: Mapping[str, datetime], report: Report) -> None:
    """An order that has ended (completed, cancelled, rejected) holds no stock: a unit still held for it is a unit
    no one can sell again. Judged per order, so it holds in a filtered run too (the SKU totals need the whole
    history); an order whose last event is under HOLD_GRACE old may still have its release or commit in flight."""
    if ev.holds is None:
        report.notes.append("stock holds per order not checked: GET /stock/{sku}/holds did not answer")
        return
    if ev.orders is None:
        return
    for sku in sorted(ev.holds):
        for oid, units in sorted(ev.holds[sku].items()):
            view = ev.orders.get(oid)
            last = last_event_at.get(oid)
            if last is None or ev.now - last < HOLD_GRACE:
                continue
            if units and view is not None and view.get("status") in TERMINAL:
                report.violations.append(
                    Violation("stock_held_after_end", oid, f"{view.get('status')} order still holds {units} {sku}")
                )


def _provider_money(order_id: str, status: str, seen: Mapping[str, Any], *, refunded: bool = False) -> list[Violation]:
    """Money at a provider's cashier: a completed order's trade is paid and captured by our record; a cancelled
    one's money was never taken or has been given back (``refunded``: completed first, so it must be a refund) --
    and the provider's own query agrees."""
    ours = str((seen.get("ours") or {}).get("status"))
    trade = str((seen.get("provider") or {}).get("status"))
    out = []
    if seen.get("agrees") is False:
        out.append(Violation("provider_disagrees", order_id, f"our payment is {ours}, the provider's trade {trade}"))
    if status == "COMPLETED" and ours != "CAPTURED":
        out.append(Violation("completed_payment", order_id, f"paid at the provider, our payment is {ours}"))
    if status == "CANCELLED" and refunded and ours != "REFUNDED":
        out.append(
            Violation("cancelled_payment", order_id, f"completed, then cancelled: want a refund, our payment is {ours}")
        )
    elif status == "CANCELLED" and ours not in ("VOIDED", "DECLINED", "CANCELLED", "REFUNDED"):
        out.append(Violation("cancelled_payment", order_id, f"money not given back: our payment is {ours}"))
    return out


def _when(fact: Fact) -> datetime:
    """When the service decided what the event says: its ``occurred_at`` (a record can be published again, later,
    from its outbox), else the record's time."""
    try:
        at = datetime.fromisoformat(str(fact.data["occurred_at"]))
    except (KeyError, ValueError):
        return fact.at
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def cancelled_after_completion(completed: Sequence[Fact], cancelled: Sequence[Fact]) -> bool:
    """A customer cancelled a completed order (allowed until its parcel is delivered): every cancellation has reason
    ``customer_request`` and was decided after every completion. Any other pair of outcomes is a conflict."""
    if not completed or not cancelled:
        return False
    if any(f.data.get("reason") != "customer_request" for f in cancelled):
        return False
    return max(_when(f) for f in completed) <= min(_when(f) for f in cancelled)


def _refusals(o: _Order, cancelled: Sequence[Fact]) -> list[Violation]:
    """A cancellation refused as too late (``parcel_already_delivered``) needs a delivered parcel -- a tracking
    event, or the carrier's record -- and once refused so, the order is never cancelled."""
    refused = [f for f in o.of("OrderCancellationRefused") if f.data.get("reason") == "parcel_already_delivered"]
    if not refused:
        return []
    out = []
    delivered = any(f.data.get("milestone") == "DELIVERED" for f in o.of("ShipmentTracked")) or any(
        b.get("milestone") == "DELIVERED" for b in o.bookings
    )
    if not delivered:
        out.append(
            Violation("cancellation_refused", o.order_id, "refused as parcel_already_delivered, no parcel delivered")
        )
    first = min(_when(f) for f in refused)
    if any(_when(f) > first for f in cancelled):
        out.append(
            Violation("cancellation_refused", o.order_id, "cancelled after a refusal as parcel_already_delivered")
        )
    return out


def _delivery_followed(
    order_id: str,
    view: Mapping[str, Any],
    bookings: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
    grace: timedelta,
) -> list[Violation]:
    """A completed order whose parcel its carrier delivered (more than ``grace`` ago) shows it delivered."""
    delivery = view.get("delivery") or {}
    if delivery.get("status") == "DELIVERED":
        return []
    for b in bookings:
        if b.get("status") != "booked" or b.get("milestone") != "DELIVERED":
            continue
        at = b.get("delivered_at")
        if isinstance(at, datetime) and now - at <= grace:
            continue
        since = f"{(now - at).total_seconds():.0f}s ago" if isinstance(at, datetime) else "at an unknown time"
        return [
            Violation(
                "delivery_not_followed",
                order_id,
                f"the carrier delivered parcel {b.get('tracking_number')} {since}; the order's delivery is "
                f"{delivery.get('status')}",
            )
        ]
    return []


def _check_stock(ev: Evidence, held: Mapping[str, int], shipped: Mapping[str, int], report: Report) -> None:
    v = report.violations
    skipped = []
    for sku in sorted(ev.stock):
        level = ev.stock[sku]
        counts = {k: int(level[k]) for k in ("available", "reserved", "shipped", "received") if k in level}
        negative = {k: n for k, n in counts.items() if n < 0}
        if negative:
            v.append(Violation("stock_negative", sku, f"{negative}"))
        if "received" in counts and "shipped" in counts:
            accounted = counts["available"] + counts["reserved"] + counts["shipped"]
            if counts["received"] != accounted:
                v.append(
                    Violation(
                        "stock_not_conserved",
                        sku,
                        f"received {counts['received']} != available {counts['available']} + reserved "
                        f"{counts['reserved']} + shipped {counts['shipped']} (= {accounted})",
                    )
                )
        else:
            skipped.append(sku)
        reserved = counts.get("reserved", 0)
        if ev.complete and reserved != held.get(sku, 0):
            v.append(Violation("stock_holds", sku, f"reserved {reserved}, open orders hold {held.get(sku, 0)}"))
        elif reserved < held.get(sku, 0):
            v.append(Violation("stock_holds", sku, f"reserved {reserved} < {held.get(sku, 0)} held by open orders"))
        if ev.complete and "shipped" in counts and counts["shipped"] != shipped.get(sku, 0):
            v.append(
                Violation("stock_shipped", sku, f"shipped {counts['shipped']}, completed ords {shipped.get(sku, 0)}")
            )
    if skipped:
        report.notes.append(
            "stock conservation skipped (inventory API has no `received`/`shipped`): " + ", ".join(skipped)
        )


# ------------------------------------------------------------------ gathering the evidence


def in_scope(order_id: str, prefix: str | None) -> bool:
    return prefix is None or order_id.startswith(prefix)


def fact_of(topic: str, key: str | None, value: bytes, timestamp_ms: int) -> Fact | None:
    """A record as a Fact; None for what no service could have read (undecodable, no order)."""
    try:
        data = json.loads(value)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    order_id = str(data.get("order_id") or key or "")
    if not order_id:
        return None
    return Fact(
        topic=topic,
        event_type=str(data.get("event_type", "")),
        order_id=order_id,
        event_id=str(data.get("event_id", "")),
        at=datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC),
        data=data,
    )


def narrow(facts: Iterable[Fact], *, since: datetime | None, prefix: str | None) -> list[Fact]:
    """The facts of orders placed at or after ``since`` (and of orders never placed), ids starting with ``prefix``."""
    facts = [f for f in facts if in_scope(f.order_id, prefix)]
    placed: dict[str, datetime] = {}
    first: dict[str, datetime] = {}
    for f in facts:
        first[f.order_id] = min(first.get(f.order_id, f.at), f.at)
        if f.event_type == "OrderPlaced":
            placed[f.order_id] = min(placed.get(f.order_id, f.at), f.at)
    if since is None:
        return facts
    keep = {oid for oid, at in placed.items() if at >= since}
    keep |= {oid for oid, at in first.items() if oid not in placed and at >= since}
    return [f for f in facts if f.order_id in keep]
