"""The runtime every service shares: HTTP (health, readiness, metrics), the Kafka subscriber, background loops.

A service's ``app.py`` builds a :class:`Service` (its composition root) and calls :func:`build_http_app`;
``python -m services.<name>`` serves it with uvicorn on ``HTTP_HOST:HTTP_PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import structlog
import uvicorn
from aiokafka import TopicPartition
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Response
from fastapi.responses import JSONResponse
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.message import StreamMessage
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from pymongo import AsyncMongoClient

from shared import logging as fulfil_logging
from shared import metrics, telemetry
from shared.consumer import Consumer, HandlerRegistry
from shared.events.base import now
from shared.inbox import Aggregates
from shared.kafka import make_broker, publish_raw
from shared.mongo import AggregateStore, Doc, connect
from shared.outbox import OutboxRecord, OutboxRelay
from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)
S = TypeVar("S", bound=BaseModel)


@dataclass
class Service:
    """Everything one service process runs. Built by the service's ``app.py``."""

    settings: ServiceSettings
    inputs: tuple[str, ...]
    registry: HandlerRegistry
    broker: KafkaBroker
    mongo: AsyncMongoClient[Doc]
    stores: list[AggregateStore[Any]] = field(default_factory=list)
    relays: list[OutboxRelay] = field(default_factory=list)
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    startup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    routers: list[APIRouter] = field(default_factory=list)
    deps: Any = None
    consumer: Consumer | None = None
    subscriber: Any = None

    @property
    def db(self) -> Any:
        return self.mongo[self.settings.database]

    async def publish_record(self, record: OutboxRecord) -> None:
        """The relay's publish: the stored trace context becomes the parent of the producer span."""
        parent = telemetry.context_from_headers(record.headers)
        with telemetry.tracer().start_as_current_span(
            f"{record.topic} publish",
            context=parent,
            kind=telemetry.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": record.topic,
                "messaging.message.id": record.event_id,
                "messaging.kafka.message.key": record.key,
                "order.id": record.key,
                "event.type": record.event_type,
            },
        ):
            headers = {
                **record.headers,
                **telemetry.current_context_headers(),
                "event_type": record.event_type,
            }
            await publish_raw(
                self.broker,
                topic=record.topic,
                key=record.key.encode(),
                value=record.value.encode(),
                headers=headers,
            )
        metrics.PUBLISHED.labels(record.topic, record.event_type).inc()

    async def publish_dead_letter(self, topic: str, key: bytes | None, value: bytes, headers: dict[str, str]) -> None:
        await publish_raw(self.broker, topic=topic, key=key, value=value, headers=headers)

    def make_relay(self, store: AggregateStore[Any]) -> OutboxRelay:
        relay = OutboxRelay(store, self.publish_record, interval=self.settings.outbox_relay_interval_seconds)
        self.stores.append(store)
        self.relays.append(relay)
        return relay

    def aggregates(self, store: AggregateStore[S], *, out_topic: str) -> Aggregates[S]:
        """The store's handling unit: idempotent saves whose events this service's relay publishes to ``out_topic``."""
        return Aggregates(store, self.make_relay(store), out_topic=out_topic)

    @classmethod
    def create(cls, settings: ServiceSettings, *, inputs: tuple[str, ...], registry: HandlerRegistry) -> Service:
        """Logging and tracing first (so everything after is seen), then the broker and the store client."""
        broker, mongo = bootstrap(settings)
        return cls(settings=settings, inputs=inputs, registry=registry, broker=broker, mongo=mongo)

    def wire_consumer(self, deps: Any) -> None:
        """Subscribe to the input topics with one consumer; every record goes through the shared failure policy."""
        self.deps = deps
        consumer = Consumer(
            settings=self.settings,
            group=self.settings.service_name,
            registry=self.registry,
            deps=deps,
            publish_raw=self.publish_dead_letter,
        )
        self.consumer = consumer

        async def raw_body(msg: StreamMessage[Any]) -> Any:
            return msg.body  # decoding is the consumer's job, so a bad record reaches the dead-letter path

        async def consume(msg: KafkaMessage) -> None:
            await consumer.handle(msg.raw_message)

        self.subscriber = self.broker.subscriber(
            *self.inputs,
            group_id=self.settings.service_name,
            ack_policy=AckPolicy.NACK_ON_ERROR,  # commit after the work is durable; seek back if even the DLQ failed
            auto_offset_reset="earliest",
            decoder=raw_body,
            max_poll_interval_ms=10 * 60 * 1000,
            title=f"{self.settings.service_name}:consume",
        )
        self.subscriber(consume)

    def assignment(self) -> set[TopicPartition]:
        kafka_consumer = getattr(self.subscriber, "consumer", None)
        return set(kafka_consumer.assignment()) if kafka_consumer is not None else set()

    async def update_lag(self) -> None:
        kafka_consumer = getattr(self.subscriber, "consumer", None)
        if kafka_consumer is None:
            return
        for tp in kafka_consumer.assignment():
            high = kafka_consumer.highwater(tp)
            if high is None:
                continue
            with contextlib.suppress(Exception):
                position = await asyncio.wait_for(kafka_consumer.position(tp), timeout=1)
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(high - position, 0))


async def _forever(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop; if it crashes, log and restart it rather than let the service go quietly deaf."""
    while True:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.error("background loop crashed, restarting", loop=name, error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(1)


async def _outbox_gauges(service: Service) -> None:
    while True:
        with contextlib.suppress(Exception):
            backlog, oldest_age = 0, 0.0
            for store in service.stores:
                count, oldest = await store.outbox_stats()
                backlog += count
                if oldest is not None:
                    oldest_age = max(oldest_age, (now() - oldest).total_seconds())
            metrics.OUTBOX_BACKLOG.set(backlog)
            metrics.OUTBOX_OLDEST_AGE.set(oldest_age)
        await asyncio.sleep(30)  # a full read of each collection on FerretDB: keep it rare


async def _wait_for_store(service: Service) -> None:
    while True:
        try:
            for store in service.stores:
                await store.ensure_indexes()
            for hook in service.startup:
                await hook()
            return
        except Exception as e:
            log.warning("store not reachable yet, retrying", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(1)


def build_http_app(service: Service, *, title: str) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await _wait_for_store(service)
        await service.broker.start()
        tasks = [asyncio.create_task(_forever(f"relay-{i}", r.run)) for i, r in enumerate(service.relays)]
        tasks += [asyncio.create_task(_forever(getattr(b, "__name__", "loop"), b)) for b in service.background]
        tasks.append(asyncio.create_task(_outbox_gauges(service)))
        log.info("service started", inputs=list(service.inputs), port=service.settings.http_port)
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await service.broker.stop()
            await service.mongo.close()
            telemetry.shutdown()

    app = FastAPI(title=title, lifespan=lifespan)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok", "service": service.settings.service_name}

    @app.get("/ready", tags=["ops"])
    async def ready() -> JSONResponse:
        """Kafka and the store answer and the consumer has partitions assigned."""
        checks: dict[str, bool] = {}
        try:
            checks["store"] = bool((await service.mongo.admin.command("ping")).get("ok"))
        except Exception:
            checks["store"] = False
        checks["kafka"] = await service.broker.ping(timeout=2)
        checks["consumer_assigned"] = bool(service.assignment())
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"])
    async def prometheus_metrics() -> Response:
        await service.update_lag()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    keys = {k.strip() for k in service.settings.api_keys.get_secret_value().split(",") if k.strip()}

    async def require_api_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
        # Business APIs only: /health, /ready and /metrics stay open for probes and scrapers.
        if keys and not any(hmac.compare_digest(x_api_key or "", k) for k in keys):
            raise HTTPException(status_code=401, detail="missing or unknown X-API-Key")

    for router in service.routers:
        app.include_router(router, dependencies=[Depends(require_api_key)])
    return app


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run the service until SIGTERM; uvicorn drains HTTP, the lifespan stops the broker and loops."""
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level="warning", access_log=False)


def bootstrap(settings: ServiceSettings) -> tuple[KafkaBroker, AsyncMongoClient[Doc]]:
    """Logging and tracing first (so everything after is seen), then the broker and the store client."""
    fulfil_logging.configure(settings)
    telemetry.configure(settings)
    return make_broker(settings), connect(settings)
