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

Carriers (``sf``, ``jd``); faults above take them as ``provider`` with the SF serviceCode or the JD path's last
segment(s) as ``operation``, the order id as ``out_trade_no``, and the kind ``refuse`` (the carrier's business
refusal, e.g. an address it does not serve) besides ``5xx``, ``slow`` and ``lost_reply``:

POST   /control/parcels/hold           {"carrier", "order_id"}        the parcel stays still (may precede the booking)
POST   /control/parcels/advance        {"carrier", "order_id", "to"}  every step up to PICKED_UP | IN_TRANSIT |
                                                                      OUT_FOR_DELIVERY | DELIVERED | EXCEPTION, now
POST   /control/parcels/release        {"carrier", "order_id"}        it moves on its own again
POST   /control/pushes                 {"carrier", "order_id" | "*", "mode", "delay_seconds"}
                                       standing mode: normal | hold | fail | duplicate | delay
POST   /control/pushes/release         {"carrier"?, "order_id"?}      send the held pushes, end those holds
GET    /control/parcels/{carrier}/{order_id}
GET    /control/parcels/{carrier}      {"carrier", "parcels": [...]}
POST   /control/jd/expire-token        every JD access token issued so far stops working
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field, field_validator
from starlette.responses import JSONResponse, Response

from .core import BillPlants, Fault, FaultKind, Faults, PayOutcome, PlantedRow, Provider, yuan
from .notifier import Mode, Notifier
from .parcels import EVERY_ORDER, Milestone, ParcelError, Parcels, Pusher, PushMode

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


class ParcelRef(BaseModel):
    carrier: str
    order_id: str


class AdvanceRequest(ParcelRef):
    to: Milestone


class PushModeRequest(BaseModel):
    carrier: str
    order_id: str = EVERY_ORDER
    mode: PushMode
    delay_seconds: float = Field(default=0.0, ge=0)


class PushReleaseRequest(BaseModel):
    carrier: str | None = None
    order_id: str | None = None


def router(
    providers: dict[str, Provider],
    faults: Faults,
    notifier: Notifier,
    plants: BillPlants,
    *,
    allowed: Sequence[Network] = LOOPBACK,
    operation_name: Callable[[str, str], str] = lambda provider, operation: operation,
    carriers: Mapping[str, Parcels] | None = None,
    pusher: Pusher | None = None,
    expire_jd_tokens: Callable[[], int] | None = None,
) -> APIRouter:
    """The control routes over these providers and carriers (their parcels, the pusher of their pushes and the
    JD token expiry); ``operation_name`` maps a provider's or carrier's aliases to its names."""
    parcels_by_carrier: Mapping[str, Parcels] = carriers or {}

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

    def parcels_of(name: str) -> Parcels:
        if name not in parcels_by_carrier:
            raise HTTPException(404, f"unknown carrier {name!r}; one of {sorted(parcels_by_carrier)}")
        return parcels_by_carrier[name]

    @routes.post("/faults")
    async def add_fault(body: FaultRequest) -> dict[str, Any]:
        if body.provider in parcels_by_carrier:
            if body.kind == "decline":
                raise HTTPException(422, "a carrier has no payment to decline; `refuse` is its business refusal")
        else:
            provider_of(body.provider)
            if body.kind == "refuse":
                raise HTTPException(422, "`refuse` is a carrier's business refusal; a payment provider's is `decline`")
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

    # ------------------------------------------------------------ carriers

    @routes.post("/parcels/hold")
    async def hold(ref: ParcelRef) -> dict[str, Any]:
        parcels = parcels_of(ref.carrier)
        parcel = parcels.hold(ref.order_id)
        return {"held": True, "parcel": parcels.view(parcel) if parcel is not None else None}

    @routes.post("/parcels/advance")
    async def advance(body: AdvanceRequest) -> Response:
        parcels = parcels_of(body.carrier)
        try:
            parcel = parcels.advance(body.order_id, body.to)
        except ParcelError as e:
            raise HTTPException(e.status, e.message) from None
        return JSONResponse(parcels.view(parcel))

    @routes.post("/parcels/release")
    async def release_parcel(ref: ParcelRef) -> dict[str, Any]:
        parcels = parcels_of(ref.carrier)
        parcel = parcels.release(ref.order_id)
        return {"held": False, "parcel": parcels.view(parcel) if parcel is not None else None}

    @routes.get("/parcels/{carrier}")
    async def all_parcels(carrier: str) -> dict[str, Any]:
        return {"carrier": carrier, "parcels": parcels_of(carrier).views()}

    @routes.get("/parcels/{carrier}/{order_id}")
    async def parcel(carrier: str, order_id: str) -> dict[str, Any]:
        parcels = parcels_of(carrier)
        found = parcels.get(order_id)
        if found is None:
            raise HTTPException(404, f"no {carrier} parcel for order {order_id!r}")
        return parcels.view(found)

    @routes.post("/pushes")
    async def push_mode(body: PushModeRequest) -> dict[str, Any]:
        parcels_of(body.carrier)
        assert pusher is not None
        pusher.set_mode(body.carrier, body.order_id, body.mode, body.delay_seconds)
        return {"carrier": body.carrier, "order_id": body.order_id, "mode": body.mode}

    @routes.post("/pushes/release")
    async def release_pushes(body: PushReleaseRequest | None = None) -> dict[str, Any]:
        body = body or PushReleaseRequest()
        if body.carrier is not None:
            parcels_of(body.carrier)
        assert pusher is not None
        return {"released": pusher.release(body.carrier, body.order_id)}

    @routes.post("/jd/expire-token")
    async def expire_jd_token() -> dict[str, Any]:
        if expire_jd_tokens is None:
            raise HTTPException(404, "no JD Logistics in this simulator")
        return {"expired": expire_jd_tokens()}

    return routes
