"""The control API for tests (JSON under ``/control/``, no auth, loopback only unless ``--control-allow`` widens it).

POST   /control/pay                    {"provider", "out_trade_no"}  the customer pays (as the cashier's Pay)
POST   /control/abandon                {"provider", "out_trade_no"}  the customer leaves; nothing happens
POST   /control/expire                 {"provider", "out_trade_no"}  the unpaid trade closes as if it expired
POST   /control/faults                 {"provider", "operation", "kind", "count", "delay_seconds", "out_trade_no"}
GET    /control/faults                 the faults still pending
DELETE /control/faults
POST   /control/notifications          {"provider", "out_trade_no", "mode", "delay_seconds"}
POST   /control/notifications/release  {"provider"?, "out_trade_no"?}
GET    /control/trades/{provider}/{out_trade_no}
POST   /control/bill-rows              {"provider", "date", "row": {"out_trade_no", "amount", "kind", "omit"}}
DELETE /control/bill-rows
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field, field_validator
from starlette.responses import JSONResponse, Response

from .core import BillPlants, Fault, FaultKind, Faults, PayOutcome, PlantedRow, Provider, yuan
from .notifier import Mode, Notifier

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class TradeRef(BaseModel):
    provider: str
    out_trade_no: str


class FaultRequest(BaseModel):
    provider: str
    operation: str = "*"
    kind: FaultKind
    count: int = Field(default=1, ge=1)
    delay_seconds: float = Field(default=0.0, ge=0)
    out_trade_no: str | None = None


class NotificationModeRequest(BaseModel):
    provider: str
    out_trade_no: str
    mode: Mode
    delay_seconds: float = Field(default=0.0, ge=0)


class ReleaseRequest(BaseModel):
    provider: str | None = None
    out_trade_no: str | None = None


class BillRow(BaseModel):
    out_trade_no: str
    kind: Literal["payment", "refund"] = "payment"
    amount: str | None = None  # yuan, "12.34"
    omit: bool = False

    @field_validator("amount")
    @classmethod
    def _yuan(cls, value: str | None) -> str | None:
        if value is not None and yuan(value) is None:
            raise ValueError("an amount in yuan with at most two decimals, like 12.34")
        return value


class BillRowRequest(BaseModel):
    provider: str
    date: dt.date
    row: BillRow


def router(
    providers: dict[str, Provider],
    faults: Faults,
    notifier: Notifier,
    plants: BillPlants,
    *,
    allowed: Sequence[Network] = LOOPBACK,
    operation_name: Callable[[str, str], str] = lambda provider, operation: operation,
) -> APIRouter:
    """The control routes over these providers; ``operation_name`` maps a provider's aliases to its names."""

    async def loopback_only(request: Request) -> None:
        host = request.client.host if request.client else ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise HTTPException(403, "the control API answers loopback callers only") from None
        if not any(address in network for network in allowed):
            raise HTTPException(403, "the control API answers loopback callers only")

    routes = APIRouter(prefix="/control", dependencies=[Depends(loopback_only)])

    def provider_of(name: str) -> Provider:
        if name not in providers:
            raise HTTPException(404, f"unknown provider {name!r}; one of {sorted(providers)}")
        return providers[name]

    @routes.post("/pay")
    async def pay(ref: TradeRef) -> Response:
        provider = provider_of(ref.provider)
        outcome = provider.pay(ref.out_trade_no)
        status = 409 if outcome in (PayOutcome.CLOSED, PayOutcome.NOT_FOUND) else 200
        return JSONResponse({"outcome": outcome.value, "trade": provider.view(ref.out_trade_no)}, status_code=status)

    @routes.post("/abandon")
    async def abandon(ref: TradeRef) -> Response:
        provider = provider_of(ref.provider)
        found = provider.abandon(ref.out_trade_no)
        return JSONResponse({"trade": provider.view(ref.out_trade_no)}, status_code=200 if found else 409)

    @routes.post("/expire")
    async def expire(ref: TradeRef) -> Response:
        provider = provider_of(ref.provider)
        closed = provider.expire(ref.out_trade_no)
        return JSONResponse({"trade": provider.view(ref.out_trade_no)}, status_code=200 if closed else 409)

    @routes.post("/faults")
    async def add_fault(body: FaultRequest) -> dict[str, Any]:
        provider_of(body.provider)
        fault = Fault(
            provider=body.provider,
            operation=operation_name(body.provider, body.operation),
            kind=body.kind,
            remaining=body.count,
            delay_seconds=body.delay_seconds,
            out_trade_no=body.out_trade_no,
        )
        faults.add(fault)
        return {"pending": [f.__dict__ for f in faults.pending]}

    @routes.get("/faults")
    async def list_faults() -> dict[str, Any]:
        return {"pending": [f.__dict__ for f in faults.pending]}

    @routes.delete("/faults")
    async def clear_faults() -> dict[str, Any]:
        faults.clear()
        return {"pending": []}

    @routes.post("/notifications")
    async def notification_mode(body: NotificationModeRequest) -> dict[str, Any]:
        provider_of(body.provider)
        notifier.set_mode(body.provider, body.out_trade_no, body.mode, body.delay_seconds)
        return {"provider": body.provider, "out_trade_no": body.out_trade_no, "mode": body.mode}

    @routes.post("/notifications/release")
    async def release(body: ReleaseRequest | None = None) -> dict[str, Any]:
        body = body or ReleaseRequest()
        return {"released": notifier.release(body.provider, body.out_trade_no)}

    @routes.get("/trades/{provider}/{out_trade_no}")
    async def trade(provider: str, out_trade_no: str) -> dict[str, Any]:
        view = provider_of(provider).view(out_trade_no)
        if view is None:
            raise HTTPException(404, f"no {provider} trade {out_trade_no!r}")
        return view

    @routes.post("/bill-rows")
    async def plant(body: BillRowRequest) -> dict[str, Any]:
        provider_of(body.provider)
        if body.row.amount is None and not body.row.omit:
            raise HTTPException(422, "a planted row needs an amount, or omit: true")
        amount = yuan(body.row.amount) if body.row.amount is not None else None
        plants.add(PlantedRow(body.provider, body.date, body.row.out_trade_no, body.row.kind, amount, body.row.omit))
        return {"planted": len(plants.rows)}

    @routes.delete("/bill-rows")
    async def clear_plants() -> dict[str, Any]:
        plants.clear()
        return {"planted": 0}

    return routes
