"""Order service composition root."""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI
from pydantic import Field

from services.order.api import install_validation_handler, order_router
from services.order.backlog import Backlog
from services.order.domain import Order
from services.order.handlers import Deps, deadline_scanner, deadline_timer, handlers
from services.order.store import OrderStore
from services.order.tracking import WatchHub
from shared import topics
from shared.runtime import Service, build_http_app
from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "order"
    http_port: int = 8080
    order_deadline_seconds: float = Field(default=300.0, gt=0)
    order_deadline_scan_interval_seconds: float = Field(default=5.0, gt=0)
    # How long past its deadline an order may wait for a saga that is behind (its own record still queued) before
    # it is cancelled anyway; unset: four deadlines.
    order_deadline_max_postpone_seconds: float | None = Field(default=None, gt=0)
    # Keep-alive comment lines on idle order streams (GET /orders/{id}/stream), so proxies keep them open.
    order_stream_keepalive_seconds: float = Field(default=15.0, gt=0)
    # Order streams one caller (a storefront, or an operator key) may hold open on one copy; beyond it, 429.
    order_stream_max_per_caller: int = Field(default=100, ge=1)


def create_service(settings: Settings | None = None) -> Service:
    settings = settings or Settings()
    service = Service.create(
        settings,
        inputs=topics.CONSUMER_GROUPS["order"],
        registry=handlers,
    )
    store = OrderStore(service.db, "orders", Order)
    deadline = timedelta(seconds=settings.order_deadline_seconds)
    orders = service.unit_of_work(store, out_topic=topics.ORDER_EVENTS, timers_of=deadline_timer(deadline))
    assert service.timers is not None
    max_postpone = settings.order_deadline_max_postpone_seconds
    deps = Deps(
        orders=orders,
        store=store,
        timers=service.timers,
        backlog=Backlog(settings),
        deadline=deadline,
        max_postpone=timedelta(seconds=max_postpone) if max_postpone else None,
    )
    service.wire_consumer(deps)
    service.background.append(lambda: deadline_scanner(deps, settings.order_deadline_scan_interval_seconds))
    # Live tracking: one tail of the topics that change an order's view, per process, while streams are open.
    hub = WatchHub(store=store, settings=settings, topics=(*service.inputs, topics.ORDER_EVENTS))
    service.background.append(hub.run)
    service.routers.append(
        order_router(
            service,
            store,
            hub=hub,
            keepalive_seconds=settings.order_stream_keepalive_seconds,
            max_streams_per_caller=settings.order_stream_max_per_caller,
        )
    )
    return service


def create_app(settings: Settings | None = None) -> FastAPI:
    app = build_http_app(create_service(settings), title="order")
    install_validation_handler(app)
    return app
