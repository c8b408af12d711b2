"""What every simulated provider shares: the providers' clock, money, injected faults, planted bill rows, the
cashier's outcomes, and the interface the control API and the cashier reach a provider through."""

from __future__ import annotations

import asyncio
import secrets
import string
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .clock import CST

if TYPE_CHECKING:
    from .keys import ProviderKeys
    from .notifier import Notifier

CENT = Decimal("0.01")


def yuan(value: object) -> Decimal | None:
    """An amount in yuan with at most two decimals, or None when it is not one."""
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not amount.is_finite() or amount != amount.quantize(CENT):
        return None
    return amount.quantize(CENT)


def yuan_text(amount: Decimal) -> str:
    return str(amount.quantize(CENT, rounding=ROUND_HALF_UP))


def digits(n: int) -> str:
    return "".join(secrets.choice(string.digits) for _ in range(n))


def token(n: int = 24) -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))


# ---------------------------------------------------------------- the customer at the cashier


class PayOutcome(StrEnum):
    """What happened when the customer pressed Pay (on the cashier page or through /control/pay)."""

    PAID = "paid"
    ALREADY_PAID = "already_paid"
    DECLINED = "declined"  # an injected `decline` fault: no money moved, the trade still waits
    CLOSED = "closed"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class CashierTrade:
    """What the cashier page shows of a trade."""

    provider: str
    token: str
    merchant: str
    subject: str
    amount: Decimal
    out_trade_no: str
    status: str  # the provider's own word: WAIT_BUYER_PAY, NOTPAY, TRADE_SUCCESS, ...
    payable: bool


class Provider(Protocol):
    """A simulated provider as the control API and the cashier see it."""

    name: str

    def pay(self, out_trade_no: str) -> PayOutcome: ...

    def abandon(self, out_trade_no: str) -> bool: ...

    def expire(self, out_trade_no: str) -> bool: ...

    def view(self, out_trade_no: str) -> dict[str, Any] | None: ...

    def cashier(self, cashier_token: str) -> CashierTrade | None: ...

    def return_url_after_pay(self, cashier_token: str) -> str | None: ...

    def sweep(self, moment: datetime) -> None: ...


# ---------------------------------------------------------------- injected faults

FaultKind = Literal["5xx", "slow", "lost_reply", "decline", "refuse"]
PAY = "pay"  # the operation a `decline` fault matches: the customer's payment, not an API call
# `refuse` is a carrier's business refusal (an address it does not serve, ...): the carrier module answers it in
# its own words, with no effect, where `with_fault` would run the call.


@dataclass
class Fault:
    provider: str
    operation: str  # an operation name of that provider, or "*"
    kind: FaultKind
    remaining: int
    delay_seconds: float = 0.0
    out_trade_no: str | None = None

    def matches(self, provider: str, operation: str, out_trade_no: str | None) -> bool:
        if self.provider != provider or self.remaining <= 0:
            return False
        if (self.kind == "decline") != (operation == PAY):
            return False
        if self.operation not in ("*", operation):
            return False
        return self.out_trade_no is None or self.out_trade_no == out_trade_no


@dataclass
class Faults:
    """The next n matching calls fail the way a test asked; each matching call uses up one."""

    pending: list[Fault] = field(default_factory=list)

    def add(self, fault: Fault) -> None:
        self.pending.append(fault)

    def clear(self) -> None:
        self.pending.clear()

    def take(self, provider: str, operation: str, out_trade_no: str | None) -> Fault | None:
        for fault in self.pending:
            if fault.matches(provider, operation, out_trade_no):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.pending.remove(fault)
                return fault
        return None


DROP_KEY = "provider_sim.drop"


def lose_reply(request: Request) -> None:
    """Drop the connection once this request's effect is done, without a byte of reply (see DropConnection)."""
    state: MutableMapping[str, bool] | None = request.scope.get(DROP_KEY)
    if state is not None:
        state["drop"] = True


async def with_fault(
    fault: Fault | None,
    request: Request,
    effect: Callable[[], Awaitable[Response]],
    unavailable: Callable[[], Response],
) -> Response:
    """Run a call's effect under a fault: `5xx` refuses before any effect, `slow` answers late, `lost_reply`
    takes effect and then drops the connection (`refuse` is the carrier's to answer, inside ``effect``)."""
    if fault is not None and fault.kind == "5xx":
        return unavailable()
    response = await effect()
    if fault is not None and fault.kind == "slow":
        await asyncio.sleep(fault.delay_seconds)
    if fault is not None and fault.kind == "lost_reply":
        lose_reply(request)
    return response


class DropConnection:
    """ASGI wrapper: a request marked by :func:`lose_reply` gets its connection aborted instead of its reply.

    uvicorn (h11) hands the app ``receive`` as a bound method of the request cycle, which holds the socket's
    transport; aborting it sends a TCP reset, so the client sees the reply lost after the call took effect.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"drop": False}
        scope[DROP_KEY] = state

        async def guarded_send(message: Message) -> None:
            if not state["drop"]:
                await send(message)

        await self.app(scope, receive, guarded_send)
        if state["drop"]:
            transport = getattr(getattr(receive, "__self__", None), "transport", None)
            if transport is not None:
                transport.abort()
            for _ in range(3):  # let the server see the connection gone before it looks for a reply
                await asyncio.sleep(0)


# ---------------------------------------------------------------- bill rows planted by tests


@dataclass(frozen=True)
class PlantedRow:
    """A row a test wants in a day's bill: it replaces the amount of the real row of that trade and kind, or
    is added when there is none; ``omit`` drops the real row instead (a payment the bill does not show)."""

    provider: str
    day: date
    out_trade_no: str
    kind: Literal["payment", "refund"]
    amount: Decimal | None
    omit: bool = False


@dataclass
class BillPlants:
    rows: list[PlantedRow] = field(default_factory=list)

    def add(self, row: PlantedRow) -> None:
        self.rows.append(row)

    def clear(self) -> None:
        self.rows.clear()

    def of(self, provider: str, day: date) -> list[PlantedRow]:
        return [r for r in self.rows if r.provider == provider and r.day == day]


@dataclass(frozen=True)
class BillEntry:
    """One row of a bill before the provider formats it; ``source`` is the provider's own record (None for a row
    a test planted without a trade behind it)."""

    out_trade_no: str
    kind: Literal["payment", "refund"]
    amount: Decimal  # positive; a refund row shows it negative where the provider's format says so
    at: datetime
    source: object = None


def with_planted(entries: list[BillEntry], planted: list[PlantedRow], *, day: date) -> list[BillEntry]:
    """The day's entries with the planted rows applied (see PlantedRow)."""
    out = list(entries)
    for row in planted:
        index = next((i for i, e in enumerate(out) if e.out_trade_no == row.out_trade_no and e.kind == row.kind), None)
        if row.omit:
            if index is not None:
                out.pop(index)
        elif index is not None and row.amount is not None:
            entry = out[index]
            out[index] = BillEntry(entry.out_trade_no, entry.kind, row.amount, entry.at, entry.source)
        elif row.amount is not None:
            at = datetime.combine(day, datetime.min.time(), CST) + timedelta(hours=12)
            out.append(BillEntry(row.out_trade_no, row.kind, row.amount, at))
    return out


@dataclass(frozen=True)
class Context:
    """What every simulated provider is built with."""

    keys: ProviderKeys
    notifier: Notifier
    faults: Faults
    plants: BillPlants
    public_url: str | None  # in replies (QR, H5 and bill URLs); None: the URL the caller used

    def base_url(self, request: Request) -> str:
        return self.public_url or str(request.base_url).rstrip("/")
