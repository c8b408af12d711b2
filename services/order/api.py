"""The order API storefronts call: place, read, cancel. Placement and cancellation go through Kafka like any
storefront message, so there is one path into the saga."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.order import domain
from services.order.store import OrderStore
from shared import topics
from shared.events.base import new_event_id, now
from shared.events.storefront import OrderCancellationRequested, OrderPlaced, OrderRequest
from shared.service import Service

OrderIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class Accepted(BaseModel):
    order_id: str
    status: str


class CancelBody(BaseModel):
    reason: str = "customer_request"


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
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Accepted | JSONResponse:
        existing = (await store.read(order_id=body.order_id)).state
        if existing is not None:
            if existing.content_hash != domain.content_hash(body):
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
        await publish(OrderPlaced(event_id=event_id, occurred_at=now(), **body.model_dump()))
        return Accepted(order_id=body.order_id, status="PENDING")

    @router.get("/orders")
    async def list_stuck_orders(
        status: Annotated[str, Query(pattern="^PENDING$")] = "PENDING",
        older_than_seconds: Annotated[float, Query(ge=0)] = 600,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """Orders not terminal after ``older_than_seconds``, with their last step (what ``fulfil stuck`` shows)."""
        at = now()
        orders = await store.not_terminal(placed_before=at - timedelta(seconds=older_than_seconds), limit=limit)
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
    async def get_order(order_id: OrderIdPath) -> dict[str, Any]:
        order = (await store.read(order_id=order_id)).state
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
            },
        )
        view["history"] = [{"event_type": h["event_type"], "at": h["at"], **h["detail"]} for h in view["history"]]
        return view

    @router.post("/orders/{order_id}/cancel", status_code=202)
    async def cancel_order(order_id: OrderIdPath, body: CancelBody | None = None) -> Accepted:
        order = (await store.read(order_id=order_id)).state
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
