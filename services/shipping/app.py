"""Shipping service composition root."""

from __future__ import annotations

from fastapi import FastAPI

from services.shipping.carrier import SandboxCarrier
from services.shipping.domain import Shipment
from services.shipping.handlers import CarrierCalls, Deps, handlers
from services.shipping.store import ShipmentStore
from shared import topics
from shared.service import Service, build_http_app
from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "shipping"
    http_port: int = 8083


def create_service(settings: Settings | None = None) -> Service:
    settings = settings or Settings()
    service = Service.create(settings, inputs=topics.CONSUMER_GROUPS["shipping"], registry=handlers)
    store = ShipmentStore(service.db, "shipments", Shipment)
    carrier = SandboxCarrier(service.db)
    deps = Deps(
        shipments=service.aggregates(store, out_topic=topics.SHIPPING_EVENTS, effects=CarrierCalls(carrier)),
        carrier=carrier,
    )
    service.wire_consumer(deps)
    return service


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_http_app(create_service(settings), title="shipping")
