"""Inventory rules, pure: when to reserve an order's stock, and what follows each outcome.

Stock is reserved only once both facts are known -- the order's lines (``OrderAccepted``) and the money
(``PaymentAuthorized``) -- whichever arrives first. A cancelled order's holds are always released.
States: AWAITING -> RESERVED -> COMMITTED (shipped) | RELEASED (cancelled); AWAITING -> UNAVAILABLE | CANCELLED.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel

from shared.events.base import EmittedEvent, Event
from shared.events.inventory import StockLine, StockReleased, StockReserved, StockUnavailable
from shared.events.storefront import Line

Status = Literal["AWAITING", "RESERVED", "UNAVAILABLE", "RELEASED", "COMMITTED", "CANCELLED"]
Decision = tuple["Reservation", Sequence[EmittedEvent]]


class Reservation(BaseModel):
    status: Status = "AWAITING"
    lines: list[StockLine] = []
    accepted: bool = False
    payment_authorized: bool = False
    cancelled: bool = False


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


def record_reservation(res: Reservation, cause: Event, short: Sequence[str]) -> Decision:
    if short:
        return res.model_copy(update={"status": "UNAVAILABLE"}), [StockUnavailable.caused_by(cause, skus=list(short))]
    return res.model_copy(update={"status": "RESERVED"}), [StockReserved.caused_by(cause, lines=res.lines)]


def cancel(res: Reservation | None) -> Reservation:
    return (res or Reservation()).model_copy(update={"cancelled": True})


def record_release(res: Reservation, cause: Event) -> Decision:
    """After the holds are released: a StockReleased event only if a reservation had been announced."""
    if res.status == "RESERVED":
        return res.model_copy(update={"status": "RELEASED"}), [StockReleased.caused_by(cause, lines=res.lines)]
    if res.status == "AWAITING":
        return res.model_copy(update={"status": "CANCELLED"}), []
    return res, []


def reservation_pending(res: Reservation | None) -> bool:
    """An order completed before its reservation was recorded here (topics re-read side by side after a restore):
    the commit must wait for it, or the units would stay reserved for good."""
    return res is None or (res.status == "AWAITING" and not res.cancelled)


def should_commit(res: Reservation | None) -> bool:
    return res is not None and res.status == "RESERVED"
