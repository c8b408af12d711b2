"""The shipping service's HTTP API: the carriers' route-push endpoints.

``POST /shipping/notify/sf`` and ``/shipping/notify/jd`` take no API key (carriers send none): the push's
signature is checked by the carrier's client, and a verified push is put on ``shipping.notifications`` -- answered
with the carrier's success reply only once Kafka has it; otherwise its failure reply, and the carrier pushes again.
Nothing else is done in the request: the shipment's consumer applies it like any other event (each route step once,
a forged or foreign push changes nothing).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response

from services.shipping.carrier import Carrier, InvalidPush
from shared import metrics, telemetry, topics
from shared.events.base import now
from shared.events.shipping import CarrierPushed
from shared.outbox import OutboxRecord
from shared.runtime import Service

log = structlog.get_logger(__name__)
NOTIFY_PATHS = {"sf": "/shipping/notify/sf", "jd": "/shipping/notify/jd"}
MAX_PUSH_BYTES = 256 * 1024  # a push is a few KB; these paths are open, so the cap is ours


def shipping_router(service: Service, carriers: Mapping[str, Carrier]) -> APIRouter:
    router = APIRouter(tags=["shipping"])
    for code, path in NOTIFY_PATHS.items():
        router.add_api_route(
            path,
            _notify_endpoint(service, code, carriers.get(code)),
            methods=["POST"],
            name=f"notify_{code}",
            summary=f"{code} route push (signature-verified; no API key)",
        )
    return router


def _notify_endpoint(service: Service, code: str, carrier: Carrier | None) -> Callable[[Request], Any]:
    async def notify(request: Request) -> Response:
        if carrier is None:
            metrics.CARRIER_PUSHES.labels(code, "not_configured").inc()
            return Response(status_code=404, content=f"{code} is not configured here", media_type="text/plain")
        body = await request.body()
        if len(body) > MAX_PUSH_BYTES:
            return _reply(carrier, ok=False, status=413)
        try:
            pushed = carrier.parse_push(body, request.headers.get("content-type", ""), dict(request.query_params))
        except InvalidPush as e:
            metrics.CARRIER_PUSHES.labels(code, "refused").inc()
            log.warning("carrier push refused", carrier=code, reason=e.reason)
            return _reply(carrier, ok=False, status=400)
        records = []
        for parcel in pushed:
            order_id = parcel.order_id
            if not order_id:  # every parcel we book carries our order id; one without it is not ours
                metrics.CARRIER_PUSHES.labels(code, "unknown_parcel").inc()
                log.warning("push without our order id", carrier=code, tracking_number=parcel.tracking_number)
                continue
            identity = ":".join([code, parcel.tracking_number, *sorted(s.step_id for s in parcel.steps)])
            event = CarrierPushed(
                event_id=uuid.uuid5(uuid.NAMESPACE_URL, identity),
                order_id=order_id,
                occurred_at=now(),
                carrier=carrier.code,
                tracking_number=parcel.tracking_number,
                steps=parcel.steps,
            )
            records.append(OutboxRecord.of(topics.SHIPPING_NOTIFICATIONS, event, telemetry.current_context_headers()))
        try:
            await service.publish(records)
        except Exception as e:  # Kafka did not take it: the carrier pushes again
            log.warning("push not recorded; the carrier will push again", carrier=code, error=repr(e))
            return _reply(carrier, ok=False, status=503)
        metrics.CARRIER_PUSHES.labels(code, "accepted").inc()
        return _reply(carrier, ok=True)

    notify.__name__ = f"notify_{code}"
    return notify


def _reply(carrier: Carrier, *, ok: bool, status: int = 200) -> Response:
    body, media_type = carrier.push_reply(ok=ok)
    return Response(status_code=200 if ok else status, content=body, media_type=media_type)
