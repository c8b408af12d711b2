"""Inventory service composition root."""

from __future__ import annotations

from fastapi import FastAPI

from services.inventory.api import stock_router
from services.inventory.domain import Reservation
from services.inventory.handlers import Deps, StockWrites, handlers
from services.inventory.store import ReservationStore, StockStore
from shared import topics
from shared.runtime import Service, build_http_app
from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "inventory"
    http_port: int = 8082


def create_service(settings: Settings | None = None) -> Service:
    settings = settings or Settings()
    service = Service.create(settings, inputs=topics.CONSUMER_GROUPS["inventory"], registry=handlers)
    store = ReservationStore(service.db, "reservations", Reservation)
    stock = StockStore(service.db)
    deps = Deps(
        reservations=service.unit_of_work(store, out_topic=topics.INVENTORY_EVENTS, effects=StockWrites(stock)),
        stock=stock,
    )
    service.wire_consumer(deps)
    service.startup.append(stock.ensure_indexes)
    service.routers.append(stock_router(stock))
    return service


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_http_app(create_service(settings), title="inventory")
