"""The payment service's HTTP API: the providers' notification endpoints and the operators' reconciliation.

``POST /payments/notify/alipay`` and ``/payments/notify/wechatpay`` take no API key (providers send none): the
signature is checked first, then the merchant and the sending time (a replay outside the window is refused). A
verified notification is put on ``payment.notifications`` and answered with the provider's success reply only once
Kafka has it -- otherwise the failure reply, and the provider sends it again on its schedule. Nothing else is done
in the request: the payment's consumer applies it like any other event (duplicates and stale reports change nothing).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, HTTPException, Query, Request, Response

from services.payment import domain
from services.payment.provider import InvalidNotification, PaymentProvider
from services.payment.store import PaymentStore
from shared import metrics, telemetry, topics
from shared.events.base import now
from shared.events.payment import ProviderNotified
from shared.keys import OperatorDep
from shared.outbox import OutboxRecord
from shared.runtime import Service

log = structlog.get_logger(__name__)
NOTIFY_PATHS = {"alipay": "/payments/notify/alipay", "wechatpay": "/payments/notify/wechatpay"}
MAX_NOTIFICATION_BYTES = 64 * 1024  # a notification is about 1 KB; these paths are open, so the cap is ours


def payment_router(service: Service, store: PaymentStore, providers: dict[str, PaymentProvider]) -> APIRouter:
    router = APIRouter(tags=["payments"])
    for name in NOTIFY_PATHS:
        router.add_api_route(
            NOTIFY_PATHS[name],
            _notify_endpoint(service, name, providers.get(name)),
            methods=["POST"],
            name=f"notify_{name}",
            summary=f"{name} asynchronous notification (signature-verified; no API key)",
        )

    @router.get("/payments/reconcile", summary="a provider's daily bill against our ledger")
    async def reconcile(
        _: OperatorDep,
        provider: Annotated[str, Query(pattern="^(alipay|wechatpay)$")],
        day: Annotated[date, Query(alias="date")],
    ) -> dict[str, Any]:
        adapter = providers.get(provider)
        if adapter is None:
            raise HTTPException(status_code=409, detail=f"{provider} is not configured on this payment service")
        bill = await adapter.bill(day=day)
        ours = await store.moved_money_on(provider=provider, day=day.isoformat())
        differences = domain.reconcile(bill, ours, day=day.isoformat())
        return {
            "provider": provider,
            "date": day.isoformat(),
            "bill_rows": len(bill),
            "ours": len(ours),
            "differences": [d.model_dump() for d in differences],
        }

    @router.get("/payments/{order_id}/provider", summary="our record of a payment beside the provider's")
    async def provider_view(_: OperatorDep, order_id: str) -> dict[str, Any]:
        payment = (await store.read(order_id=order_id)).state
        if payment is None:
            raise HTTPException(status_code=404, detail="no payment for this order")
        ours = {"status": payment.status, "provider": payment.provider, "amount": format(payment.amount, "f")}
        adapter = providers.get(payment.provider)
        if adapter is None:
            return {"order_id": order_id, "ours": ours, "provider": None, "agrees": None}
        trade = await adapter.query(order_id=order_id)
        return {
            "order_id": order_id,
            "ours": ours,
            "provider": trade.model_dump(mode="json"),
            "agrees": domain.agrees_with_provider(payment, trade.status),
        }

    return router


def _notify_endpoint(service: Service, name: str, provider: PaymentProvider | None) -> Callable[[Request], Any]:
    async def notify(request: Request) -> Response:
        if provider is None:
            metrics.PROVIDER_NOTIFICATIONS.labels(name, "not_configured").inc()
            return Response(status_code=404, content=f"{name} is not configured here", media_type="text/plain")
        body = await request.body()
        if len(body) > MAX_NOTIFICATION_BYTES:
            return _reply(provider, ok=False, status=413)
        try:
            notice = provider.parse_notification(headers=dict(request.headers), body=body, at=now())
        except InvalidNotification as e:
            metrics.PROVIDER_NOTIFICATIONS.labels(name, "refused").inc()
            log.warning("provider notification refused", provider=name, reason=str(e))
            return _reply(provider, ok=False, status=400)
        identity = f"{name}:{notice.notify_id or notice.trade_no}:{notice.kind}:{notice.status}:{notice.refund_no}"
        event = ProviderNotified(
            event_id=uuid.uuid5(uuid.NAMESPACE_URL, identity),
            order_id=notice.order_id,
            occurred_at=now(),
            provider=provider.name,
            kind=notice.kind,
            status=notice.status,
            trade_no=notice.trade_no,
            refund_no=notice.refund_no,
            amount=notice.amount,
            merchant=notice.merchant,
            notify_id=notice.notify_id,
        )
        record = OutboxRecord.of(topics.PAYMENT_NOTIFICATIONS, event, telemetry.current_context_headers())
        try:
            await service.publish([record])
        except Exception as e:  # Kafka did not take it: the provider sends it again
            log.warning("notification not recorded; the provider will retry", provider=name, error=repr(e))
            return _reply(provider, ok=False, status=503)
        metrics.PROVIDER_NOTIFICATIONS.labels(name, "accepted").inc()
        log.info("provider notification accepted", provider=name, order_id=notice.order_id, status=notice.status)
        return _reply(provider, ok=True)

    notify.__name__ = f"notify_{name}"
    return notify


def _reply(provider: PaymentProvider, *, ok: bool, status: int | None = None) -> Response:
    code, media_type, text = provider.notification_reply(ok=ok)
    return Response(
        status_code=code if ok or status is None else max(code, status), content=text, media_type=media_type
    )
