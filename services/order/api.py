"""The order API storefronts call: place, read, cancel. Placement and cancellation go through Kafka like any
storefront message, so there is one path into the saga."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from services.order import domain
from services.order.store import OrderStore
from shared import topics
from shared.events.base import new_event_id, now
from shared.events.storefront import CancelReason, OrderCancellationRequested, OrderPlaced, OrderRequest
from shared.keys import Caller, CallerDep
from shared.service import Service

OrderIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class Accepted(BaseModel):
    order_id: str
    status: str


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: CancelReason = "customer_request"


def _visible(order: domain.Order | None, caller: Caller) -> domain.Order | None:
    """Another storefront's order is answered exactly like one that does not exist (404): ids do not leak."""
    return order if order is not None and caller.owns(order.storefront_id) else None


def install_validation_handler(app: FastAPI) -> None:
    """422 with field-level reasons; the input is never echoed (it may hold a card number)."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)


def order_router(service: Service, store: OrderStore) -> APIRouter:
    router = APIRouter(tags=["orders"])

    async def publish(event: OrderPlaced | OrderCancellationRequested) -> None:
        await service.producer.send_and_wait(
            topics.STOREFRONT_ORDERS,
            event.model_dump_json().encode(),
            key=event.order_id.encode(),
            headers=[("event_type", event.event_type.encode())],
        )

    @router.post("/orders", status_code=202, response_model=Accepted)
    async def place_order(
        body: OrderRequest,
        caller: CallerDep,
        idempotency_key: Annotated[str | None, Header(max_length=200, pattern=r"^[\x21-\x7e]+$")] = None,
    ) -> Accepted | JSONResponse:
        existing = (await store.read(order_id=body.order_id)).state
        if existing is not None:
            if existing.content_hash != domain.content_hash(body) or existing.storefront_id != caller.storefront_id:
                return JSONResponse(
                    {"detail": "order_id_conflict: a different order was already placed under this order_id"},
                    status_code=409,
                )
            return Accepted(order_id=body.order_id, status=existing.status)
        event_id = (
            uuid.uuid5(uuid.NAMESPACE_URL, f"idempotency:{body.order_id}:{idempotency_key}")
            if idempotency_key
            else new_event_id()
        )
        # The owner comes from the key, never from the body: a storefront cannot place orders as another one.
        placed = OrderPlaced(
            event_id=event_id, occurred_at=now(), storefront_id=caller.storefront_id, **body.model_dump()
        )
        await publish(placed)
        return Accepted(order_id=body.order_id, status="PENDING")

    @router.get("/orders")
    async def list_stuck_orders(
        caller: CallerDep,
        status: Annotated[str, Query(pattern="^PENDING$")] = "PENDING",
        older_than_seconds: Annotated[float, Query(ge=0)] = 600,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """Orders not terminal after ``older_than_seconds``, with their last step (what ``fulfil stuck`` shows);
        a storefront sees only its own."""
        at = now()
        placed_before = at - timedelta(seconds=older_than_seconds)
        if caller.operator:
            orders = await store.not_terminal(placed_before=placed_before, limit=limit)
        else:
            query = {"status": "PENDING", "accepted_at": {"$lte": placed_before}}
            found = await store.latest_matching(
                {**query, "state.storefront_id": caller.storefront_id}, sort="accepted_at", limit=limit
            )
            orders = [d.state for d in found if d.state is not None]
        items = []
        for o in orders:
            last = o.history[-1] if o.history else None
            items.append(
                {
                    "order_id": o.order_id,
                    "status": o.status,
                    "stage": o.stage,
                    "last_step": last.event_type if last else None,
                    "last_step_at": last.at.isoformat() if last else None,
                    "age_seconds": round((at - (o.accepted_at or o.placed_at)).total_seconds(), 1),
                    "deadline_at": o.deadline_at.isoformat() if o.deadline_at else None,
                    "trace_id": o.trace_id,
                }
            )
        return {"status": status, "older_than_seconds": older_than_seconds, "orders": items}

    @router.get("/orders/{order_id}")
    async def get_order(order_id: OrderIdPath, caller: CallerDep) -> dict[str, Any]:
        order = _visible((await store.read(order_id=order_id)).state, caller)
        if order is None:
            raise HTTPException(status_code=404, detail=f"unknown order {order_id}")
        view = order.model_dump(
            mode="json",
            include={
                "order_id",
                "status",
                "stage",
                "reason",
                "errors",
                "total",
                "currency",
                "lines",
                "shipment",
                "history",
                "notifications",
                "trace_id",
                "placed_at",
                "terminal_at",
                "storefront_id",
            },
        )
        view["history"] = [{"event_type": h["event_type"], "at": h["at"], **h["detail"]} for h in view["history"]]
        return view

    @router.post("/orders/{order_id}/cancel", status_code=202)
    async def cancel_order(order_id: OrderIdPath, caller: CallerDep, body: CancelBody | None = None) -> Accepted:
        order = _visible((await store.read(order_id=order_id)).state, caller)
        if order is None:
            raise HTTPException(status_code=404, detail=f"unknown order {order_id}")
        reason = body.reason if body else "customer_request"
        await publish(
            OrderCancellationRequested(
                event_id=new_event_id(),
                occurred_at=now(),
                order_id=order_id,
                reason=reason,
            )
        )
        return Accepted(order_id=order_id, status=order.status)

    return router
