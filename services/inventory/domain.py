"""Inventory rules, pure: when to hold an order's stock, what each stock write answered, and what follows.

Stock is reserved only once both facts are known -- the order's lines (``OrderAccepted``) and the money
(``PaymentAuthorized``) -- whichever arrives first. Holding, giving back and shipping units are writes to SKU
documents every copy of the service shares, so none of them is made inside a step that may run again on a stale
version: a step records the *intent* (RESERVING, RELEASING, COMMITTING), the stock writes it names
(:func:`pending`) are made once the intent is durable, and their answer is recorded by :func:`record`. Whoever meets
an intent -- the copy that wrote it, a redelivery, the other copy -- makes the same writes, each idempotent per
(order, SKU) in the stock store, so the first answer recorded is the one that counts.

States::

    AWAITING -> RESERVING -> RESERVED -> COMMITTING -> COMMITTED      (shipped)
                                      -> RELEASING  -> RELEASED       (cancelled: StockReleased)
                          -> RELEASING -> UNAVAILABLE                 (a line short: StockUnavailable)
                          -> RELEASING -> CANCELLED                   (cancelled while reserving: nothing announced)
    AWAITING -> CANCELLED

A reservation that comes up short keeps nothing: the lines it did hold are given back before StockUnavailable is
announced. A cancellation that meets a reservation in flight is noted; the reservation is finished, then given back,
and nobody hears of it (the order is cancelled already). A cancellation after the units were committed gives nothing
back: they count as shipped (a customer may cancel a completed order until its parcel is delivered). A completion
waits (``NotYet``) while the reservation has not been answered yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel

from shared.events.base import EmittedEvent, Event
from shared.events.inventory import StockLine, StockReleased, StockReserved, StockUnavailable
from shared.events.storefront import Line

Status = Literal[
    "AWAITING",
    "RESERVING",
    "RESERVED",
    "UNAVAILABLE",
    "RELEASING",
    "RELEASED",
    "COMMITTING",
    "COMMITTED",
    "CANCELLED",
]
Ending = Literal["RELEASED", "UNAVAILABLE", "CANCELLED"]  # what a RELEASING reservation becomes once given back
Decision = tuple["Reservation", Sequence[EmittedEvent]]


class Reservation(BaseModel):
    status: Status = "AWAITING"
    lines: list[StockLine] = []
    accepted: bool = False
    payment_authorized: bool = False
    cancelled: bool = False
    short: list[str] = []  # the SKUs a reservation found short of stock
    ending: Ending | None = None  # set with RELEASING


class StockWrite(BaseModel):
    """The stock writes a reservation has pending: hold, give back or ship every line."""

    model_config = {"frozen": True}

    operation: Literal["reserve", "release", "commit"]


class StockAnswer(BaseModel):
    short: list[str] = []  # to a reserve: the SKUs that could not be held


def merge_lines(lines: Sequence[Line]) -> list[StockLine]:
    """One entry per SKU: an order may list the same SKU twice; holds are per (SKU, order)."""
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.sku] = totals.get(line.sku, 0) + line.quantity
    return [StockLine(sku=sku, quantity=q) for sku, q in sorted(totals.items())]


def with_order(res: Reservation | None, lines: Sequence[Line]) -> Reservation:
    return (res or Reservation()).model_copy(update={"accepted": True, "lines": merge_lines(lines)})


def with_payment(res: Reservation | None) -> Reservation:
    return (res or Reservation()).model_copy(update={"payment_authorized": True})


def should_reserve(res: Reservation) -> bool:
    return res.status == "AWAITING" and res.accepted and res.payment_authorized and not res.cancelled


def reserve(res: Reservation) -> Reservation:
    """Intend to hold every line once the order and the money are both known (and the order is not cancelled)."""
    return res.model_copy(update={"status": "RESERVING"}) if should_reserve(res) else res


def pending(res: Reservation | None) -> StockWrite | None:
    if res is not None and res.status == "RESERVING":
        return StockWrite(operation="reserve")
    if res is not None and res.status == "RELEASING":
        return StockWrite(operation="release")
    if res is not None and res.status == "COMMITTING":
        return StockWrite(operation="commit")
    return None


def record(res: Reservation, write: StockWrite, answer: StockAnswer, cause: Event) -> Decision:
    """The stock writes of ``write`` are made; ``answer`` is what they found."""
    if pending(res) != write:
        return res, []  # already recorded by the other copy or a redelivery
    if write.operation == "reserve":
        return record_reservation(res, cause, answer.short)
    if write.operation == "release":
        return record_release(res, cause)
    return res.model_copy(update={"status": "COMMITTED"}), []


def record_reservation(res: Reservation, cause: Event, short: Sequence[str]) -> Decision:
    """Every line held: announced, unless the order was cancelled meanwhile (then given back unannounced). A line
    short: the lines held are given back first, and the shortage announced after."""
    if res.cancelled:
        return res.model_copy(update={"status": "RELEASING", "ending": "CANCELLED", "short": list(short)}), []
    if short:
        return res.model_copy(update={"status": "RELEASING", "ending": "UNAVAILABLE", "short": list(short)}), []
    return res.model_copy(update={"status": "RESERVED"}), [StockReserved.caused_by(cause, lines=res.lines)]


def record_release(res: Reservation, cause: Event) -> Decision:
    """Every line given back: the reservation ends as its ``ending`` says, announced as such."""
    ending = res.ending or "RELEASED"
    released = res.model_copy(update={"status": ending})
    if ending == "RELEASED":
        return released, [StockReleased.caused_by(cause, lines=res.lines)]
    if ending == "UNAVAILABLE":
        return released, [StockUnavailable.caused_by(cause, skus=list(res.short))]
    return released, []


def cancel(res: Reservation | None) -> Reservation:
    """OrderCancelled: give back what an announced reservation holds (an intent). Noted only while a reservation is
    in flight (given back once answered) or once its units are committed (they count as shipped)."""
    res = (res or Reservation()).model_copy(update={"cancelled": True})
    if res.status == "AWAITING":
        return res.model_copy(update={"status": "CANCELLED"})
    if res.status == "RESERVED":
        return res.model_copy(update={"status": "RELEASING", "ending": "RELEASED"})
    return res


def awaits_reservation(res: Reservation | None) -> bool:
    """A completion that comes before the reservation is answered (topics re-read side by side after a restore, or
    the reservation still in flight): the commit must wait for it, or the units would stay reserved for good."""
    return res is None or (res.status in ("AWAITING", "RESERVING") and not res.cancelled)


def complete(res: Reservation) -> Reservation:
    """OrderCompleted: ship what the reservation holds (an intent); anything else has nothing to ship."""
    return res.model_copy(update={"status": "COMMITTING"}) if res.status == "RESERVED" else res
