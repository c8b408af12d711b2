"""The order API storefronts call: place, read, track (a Server-Sent Events stream), cancel. Placement and
cancellation go through Kafka like any storefront message, so there is one path into the saga."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Annotated, Any

from aiokafka.errors import KafkaError
from fastapi import APIRouter, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from services.order import domain
from services.order.store import OrderStore
from services.order.tracking import WatchHub
from shared import topics
from shared.consumer import Outage
from shared.events.base import new_event_id, now
from shared.events.storefront import CancelReason, OrderCancellationRequested, OrderPlaced, OrderRequest
from shared.keys import ANONYMOUS, Caller, CallerDep
from shared.mongo import Loaded
from shared.runtime import Service

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


VIEW_FIELDS = {
    "order_id",
    "status",
    "stage",
    "reason",
    "errors",
    "total",
    "currency",
    "lines",
    "shipment",
    "delivery",
    "payment_action",
    "history",
    "notifications",
    "trace_id",
    "placed_at",
    "terminal_at",
    "storefront_id",
}
STREAM_EVENT = "order"
STREAM_RETRY_AFTER_SECONDS = 10  # a caller at its stream limit: when to try again (once one of its streams closed)
KAFKA_RETRY_AFTER_SECONDS = 2  # Kafka did not take a placement or a cancellation: when to send it again


def stream_owner(caller: Caller) -> str | None:
    """Whose streams a stream counts against: a storefront's (all its keys), or an operator key's. None: a request
    without a key where keys are not required (development only; production always requires them) is not counted:
    it names no one, and the local benchmark holds thousands of streams that way."""
    if caller == ANONYMOUS:
        return None
    return f"storefront:{caller.storefront_id}" if not caller.operator else f"key:{caller.key_id}"


class _Stream(EventSourceResponse):
    """An event stream that runs ``on_close`` when the response ends, however it ends (the client gone before the
    first event included: the generator's own ``finally`` would never run then)."""

    def __init__(self, *args: Any, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def view_of(order: domain.Order) -> dict[str, Any]:
    """What a storefront sees of an order: ``GET /orders/{id}`` and each event of its stream."""
    view = order.model_dump(mode="json", include=VIEW_FIELDS)
    view["history"] = [{"event_type": h["event_type"], "at": h["at"], **h["detail"]} for h in view["history"]]
    return view


async def _ended_by(store: OrderStore, current: Loaded[domain.Order], last_event_id: int) -> bool:
    """Whether the version a client last received already showed the order at its end (its stream had ended)."""
    if last_event_id >= current.version:
        return True
    if last_event_id < 1:
        return False
    seen = await store.version(order_id=current.order_id, version=last_event_id)
    return seen is not None and seen.state is not None and seen.state.followed_to_the_end


def install_validation_handler(app: FastAPI) -> None:
    """422 with field-level reasons (the input is never echoed: it may hold a card number); 503 with Retry-After
    when Kafka does not take the record, so a storefront sends it again rather than reading a 500."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Outage)
    @app.exception_handler(KafkaError)
    async def kafka_away(_: Request, exc: Exception) -> JSONResponse:
        # Kafka did not take the record (a broker restarting, failing over, a producer being replaced): nothing was
        # accepted, and the same request (with its Idempotency-Key) is the same order when sent again.
        return JSONResponse(
            {"detail": f"the order could not be recorded right now ({type(exc).__name__}); send it again"},
            status_code=503,
            headers={"Retry-After": str(KAFKA_RETRY_AFTER_SECONDS)},
        )

    @app.exception_handler(RecursionError)
    async def too_deep(_: Request, exc: RecursionError) -> JSONResponse:
        # A body nested just under the JSON parser's limit is parsed, then exhausts the stack in validation (the
        # order's size check re-encodes it): the body's fault, answered like one the parser refuses, not a 500.
        return JSONResponse({"detail": "the body is nested too deeply to be read"}, status_code=400)


def order_router(
    service: Service,
    store: OrderStore,
    *,
    hub: WatchHub | None = None,
    keepalive_seconds: float = 15.0,
    max_streams_per_caller: int = 100,
) -> APIRouter:
    router = APIRouter(tags=["orders"])

    async def publish(event: OrderPlaced | OrderCancellationRequested) -> None:
        await service.send(
            topics.STOREFRONT_ORDERS,
            event.model_dump_json().encode(),
            key=event.order_id.encode(),
            headers={"event_type": event.event_type},
        )

    @router.post("/orders", status_code=202, response_model=Accepted)
    async def place_order(
        body: OrderRequest,
        caller: CallerDep,
        idempotency_key: Annotated[str | None, Header(max_length=200, pattern=r"^[\x21-\x7e]+$")] = None,
    ) -> Accepted | JSONResponse:
        existing = (await store.read(order_id=body.order_id)).state
        if existing is not None:
            if not domain.is_retry(existing, body, caller.storefront_id):
                return JSONResponse({"detail": domain.ORDER_ID_CONFLICT}, status_code=409)
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
        return view_of(order)

    @router.get("/orders/{order_id}/stream", response_class=EventSourceResponse, responses={404: {}, 204: {}})
    async def stream_order(
        order_id: OrderIdPath,
        caller: CallerDep,
        last_event_id: Annotated[int | None, Header(ge=0, le=10**12)] = None,
    ) -> Response:
        """Live tracking (Server-Sent Events): the order's view now, then each status, stage, shipment or delivery
        change, until its end has been sent: cancelled, rejected, or completed and its parcel delivered.
        ``Last-Event-ID`` (a version) resumes without repeating anything. A caller (a storefront, or an operator
        key) may hold ``ORDER_STREAM_MAX_PER_CALLER`` streams open on this copy; beyond that, 429 with Retry-After.

        Built on sse-starlette's ``EventSourceResponse`` rather than FastAPI's own SSE support: its keep-alive
        interval is a per-response argument (ours comes from settings; FastAPI's is a private module constant),
        and it ends open streams when uvicorn shuts down, so a rolling restart is not held up by clients.
        """
        if hub is None:
            raise HTTPException(status_code=503, detail="order tracking is not available on this copy")
        owner = stream_owner(caller)
        if owner is not None and not hub.admit(owner, max_streams_per_caller):
            raise HTTPException(
                status_code=429,
                detail=f"too many open order streams ({max_streams_per_caller}): close one, or retry later",
                headers={"Retry-After": str(STREAM_RETRY_AFTER_SECONDS)},
            )
        # Subscribe first, then read: a change written between the two reaches the queue instead of being lost.
        queue = hub.subscribe(order_id)
        closed = False

        def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                hub.unsubscribe(order_id, queue)
                if owner is not None:
                    hub.release(owner)

        try:
            loaded = await store.read(order_id=order_id)
            hub.read_by_stream(order_id, loaded.version)
            order = _visible(loaded.state, caller)
            if order is None:
                raise HTTPException(status_code=404, detail=f"unknown order {order_id}")
            if (
                last_event_id is not None
                and order.followed_to_the_end
                and await _ended_by(store, loaded, last_event_id)
            ):
                # The client has the terminal state already: 204 tells an EventSource to stop reconnecting.
                close()
                return Response(status_code=204)
        except BaseException:
            close()
            raise

        async def events() -> AsyncIterator[ServerSentEvent]:
            try:
                after = last_event_id if last_event_id is not None else -1
                current: Loaded[domain.Order] | None = loaded
                sent: tuple[Any, ...] | None = None
                while True:
                    if current is not None and current.state is not None and current.version > after:
                        state = current.state
                        shown = (state.status, state.stage, state.shipment, state.delivery, state.payment_action)
                        if sent is None or shown != sent:  # the first event always; then only changes that show
                            sent = shown
                            yield ServerSentEvent(
                                data=json.dumps(view_of(state), ensure_ascii=False, separators=(",", ":")),
                                event=STREAM_EVENT,
                                id=str(current.version),
                                sep="\n",
                            )
                        after = current.version
                        if state.followed_to_the_end:
                            return
                    current = await queue.get()
            finally:
                close()

        return _Stream(
            events(),
            on_close=close,
            ping=keepalive_seconds,
            ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
            sep="\n",
            send_timeout=30,
        )

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
