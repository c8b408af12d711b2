"""Payment service composition root: settings, broker, store, gateway, handlers, HTTP."""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI
from pydantic import Field

from services.payment.domain import Payment
from services.payment.gateway import SandboxGateway
from services.payment.handlers import Deps, ProviderCalls, handlers, review_scanner, review_timer
from services.payment.store import PaymentStore
from shared import topics
from shared.service import Service, build_http_app
from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "payment"
    http_port: int = 8081
    payment_review_hold_seconds: float = Field(default=20.0, ge=0)


def create_service(settings: Settings | None = None) -> Service:
    settings = settings or Settings()
    service = Service.create(settings, inputs=topics.CONSUMER_GROUPS["payment"], registry=handlers)
    store = PaymentStore(service.db, "payments", Payment)
    gateway = SandboxGateway(service.db)
    review_hold = timedelta(seconds=settings.payment_review_hold_seconds)
    payments = service.aggregates(
        store,
        out_topic=topics.PAYMENT_EVENTS,
        effects=ProviderCalls(gateway, review_hold),
        timers_of=review_timer,
    )
    assert service.timers is not None
    deps = Deps(payments=payments, store=store, timers=service.timers, gateway=gateway, review_hold=review_hold)
    service.wire_consumer(deps)
    service.background.append(lambda: review_scanner(deps))
    return service


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_http_app(create_service(settings), title="payment")
