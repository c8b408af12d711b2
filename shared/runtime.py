"""The runtime every service shares: HTTP (health, readiness, metrics), the Kafka subscriber, background loops.

A service's ``app.py`` builds a :class:`Service` (its composition root) and calls :func:`build_http_app`;
``python -m services.<name>`` serves it with uvicorn on ``HTTP_HOST:HTTP_PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import structlog
import uvicorn
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import InvalidProducerIdMapping, KafkaTimeoutError, OutOfOrderSequenceNumber, UnknownProducerId
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from pymongo import AsyncMongoClient

from shared import logging as fulfil_logging
from shared import metrics, telemetry
from shared.consumer import Consumer, HandlerRegistry, Outage, Pipeline
from shared.kafka import SEND_TIMEOUT_SECONDS, make_consumer, make_producer, producer_start_timeout
from shared.keys import COLLECTION as API_KEYS_COLLECTION
from shared.keys import DOC_PATHS, OPEN_PATHS, KeyGuard, KeyStore
from shared.mongo import AggregateStore, Doc, Timers, connect
from shared.outbox import OutboxRecord
from shared.settings import ServiceSettings
from shared.tasks import cancelled
from shared.unit_of_work import Effects, UnitOfWork

log = structlog.get_logger(__name__)
S = TypeVar("S", bound=BaseModel)


# An idempotent producer whose sequence numbers the broker no longer accepts (a broker restarted mid-batch) fails
# every later send until it is replaced; left in place, placements would be dead-lettered for as long.
PRODUCER_BROKEN = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerIdMapping)


@dataclass
class Service:
    """Everything one service process runs. Built by the service's ``app.py``."""

    settings: ServiceSettings
    inputs: tuple[str, ...]
    registry: HandlerRegistry
    mongo: AsyncMongoClient[Doc]
    stores: list[AggregateStore[Any]] = field(default_factory=list)
    timers: Timers | None = None
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    startup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    routers: list[APIRouter] = field(default_factory=list)
    # Paths answered without an API key, beside the probes (callers that send none: payment providers' notifications).
    open_paths: set[str] = field(default_factory=set)
    deps: Any = None
    consumer: Consumer | None = None
    pipeline: Pipeline | None = None
    _producer: AIOKafkaProducer | None = None
    # Why the producer cannot be trusted: its replacement failed to start (the broker had rejected it). Reported by
    # /health and /ready; the next send tries the replacement again. None while all is well.
    producer_broken: str | None = None
    send_timeout: float = SEND_TIMEOUT_SECONDS  # no send waits longer (a producer's waits are bounded but not its sum)
    start_timeout: float | None = None  # None: as long as the bootstrap servers may take (producer_start_timeout)
    _unreplaced: AIOKafkaProducer | None = None  # the rejected producer still in place (its replacement failed)
    _renewing: asyncio.Lock = field(default_factory=asyncio.Lock)
    _renewals: int = 0  # replacement attempts so far: a send that waited for one in progress does not repeat it

    @property
    def db(self) -> Any:
        return self.mongo[self.settings.database]

    @property
    def producer(self) -> AIOKafkaProducer:
        """The Kafka producer (aiokafka clients are made inside the running event loop: see :meth:`start`)."""
        if self._producer is None:
            raise RuntimeError("the service's Kafka producer is not started")
        return self._producer

    async def start_producer(self) -> None:
        if self._producer is None:
            producer = make_producer(self.settings)
            await self._start(producer)
            self._producer = producer

    async def _start(self, producer: AIOKafkaProducer) -> None:
        """Start a producer within ``start_timeout``; one that fails is stopped (its connections and tasks closed)
        and never used: sends on an unstarted aiokafka producer wait for metadata for ever."""
        try:
            await asyncio.wait_for(producer.start(), self.start_timeout or producer_start_timeout(self.settings))
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise

    async def stop_producer(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, records: Sequence[OutboxRecord]) -> None:
        """Publish records (in order, per key) and wait until Kafka has acknowledged all of them (acks=all).

        The sends are handed to the producer together, so they leave in a few batched requests rather than one
        round trip each. Each record carries the trace context stored with it (the handler span that emitted
        it), so the consumer's span continues the order's trace; no span of its own (measured: spans were a
        quarter of a service's CPU on the hot path).
        """
        if not records:
            return
        producer = await self._sending_producer()
        try:
            await self._bounded(self._publish(producer, records))
        except PRODUCER_BROKEN as e:
            await self.renew_producer(producer)
            raise Outage(f"Kafka producer replaced after {type(e).__name__}; sending again") from e
        for record in records:
            metrics.PUBLISHED.labels(record.topic, record.event_type).inc()

    async def renew_producer(self, broken: AIOKafkaProducer) -> None:
        """Replace a producer the broker stopped accepting (once, however many sends saw it fail).

        The fresh producer is put in place only once it has started. If it cannot start (Kafka away, a timeout),
        the rejected one stays, the failure is logged and shown by /health and /ready, and Outage is raised: the
        send is retried like any outage, and the next send tries the replacement again.
        """
        attempts_seen = self._renewals
        async with self._renewing:
            if id(self._producer) != id(broken):  # replaced already, by another send that saw it fail
                return
            if self._renewals != attempts_seen and self.producer_broken is not None:
                # It failed while this send waited for that attempt: the next send tries again, not every waiter.
                raise Outage(f"Kafka producer not replaced: {self.producer_broken}")
            self._renewals += 1
            log.warning("Kafka producer rejected by the broker; replacing it")
            fresh = make_producer(self.settings)
            try:
                await self._start(fresh)
            except Exception as e:
                self._unreplaced = broken
                self.producer_broken = f"its replacement failed to start: {type(e).__name__}: {e}"
                log.error("Kafka producer could not be replaced; the next send tries again", error=self.producer_broken)
                raise Outage(f"Kafka producer not replaced: {self.producer_broken}") from e
            self._producer, self._unreplaced, self.producer_broken = fresh, None, None
            log.info("Kafka producer replaced")
        with contextlib.suppress(Exception):
            await broken.stop()

    async def _sending_producer(self) -> AIOKafkaProducer:
        """The producer to send with; first the replacement of a rejected one, if an earlier attempt failed."""
        producer = self.producer
        if producer is self._unreplaced:
            await self.renew_producer(producer)
            producer = self.producer
        return producer

    async def _bounded(self, sending: Awaitable[Any]) -> Any:
        """A send that Kafka does not answer within ``send_timeout`` is an outage (KafkaTimeoutError: retried)."""
        try:
            return await asyncio.wait_for(sending, self.send_timeout)
        except TimeoutError:
            raise KafkaTimeoutError(f"Kafka did not acknowledge within {self.send_timeout:g} s") from None

    @staticmethod
    async def _publish(producer: AIOKafkaProducer, records: Sequence[OutboxRecord]) -> None:
        futures = [
            await producer.send(
                record.topic,
                record.value.encode(),
                key=record.key.encode(),
                headers=[
                    *((k, v.encode()) for k, v in record.headers.items()),
                    ("event_type", record.event_type.encode()),
                ],
            )
            for record in records
        ]
        await asyncio.gather(*futures)

    async def publish_dead_letter(self, topic: str, key: bytes | None, value: bytes, headers: dict[str, str]) -> None:
        await self.send(topic, value, key=key, headers=headers)

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Mapping[str, str]) -> None:
        """One record, acknowledged (acks=all), guarded as :meth:`publish` is: a producer the broker rejected is
        replaced and the send reported as an :class:`Outage` (send it again), as is a send Kafka does not answer."""
        producer = await self._sending_producer()
        try:
            await self._bounded(
                producer.send_and_wait(topic, value, key=key, headers=[(k, v.encode()) for k, v in headers.items()])
            )
        except PRODUCER_BROKEN as e:
            await self.renew_producer(producer)
            raise Outage(f"Kafka producer replaced after {type(e).__name__}; sending again") from e

    def unit_of_work(
        self,
        store: AggregateStore[S],
        *,
        out_topic: str,
        effects: Effects[S] | None = None,
        timers_of: Callable[[S], Mapping[str, datetime | None]] | None = None,
    ) -> UnitOfWork[S]:
        """The store's unit of work: idempotent saves whose events are published to ``out_topic``."""
        self.stores.append(store)
        if timers_of is not None and self.timers is None:
            self.timers = Timers(self.db)
        return UnitOfWork(
            store, self.publish, out_topic=out_topic, effects=effects, timers=self.timers, timers_of=timers_of
        )

    @classmethod
    def create(cls, settings: ServiceSettings, *, inputs: tuple[str, ...], registry: HandlerRegistry) -> Service:
        """Logging and tracing first (so everything after is seen), then the Kafka producer and the store client."""
        fulfil_logging.configure(settings)
        telemetry.configure(settings)
        return cls(settings=settings, inputs=inputs, registry=registry, mongo=connect(settings))

    def wire_consumer(self, deps: Any) -> None:
        """Every record of the input topics goes through the shared failure policy (``Consumer``)."""
        self.deps = deps
        self.consumer = Consumer(
            settings=self.settings,
            group=self.settings.service_name,
            registry=self.registry,
            deps=deps,
            publish_raw=self.publish_dead_letter,
        )

    def start_pipeline(self) -> Pipeline | None:
        if self.consumer is None or not self.inputs:
            return None
        kafka_consumer = make_consumer(self.settings, group=self.settings.service_name)
        self.pipeline = Pipeline(
            kafka_consumer,
            self.consumer.handle,
            max_in_flight=self.settings.consumer_max_in_flight,
            wait_for_prior=self.settings.consumer_wait_for_prior_seconds,
        )
        kafka_consumer.subscribe(list(self.inputs), listener=self.pipeline)
        return self.pipeline

    async def prepare_store(self) -> None:
        """What must hold before the first record is consumed: the store answers, its indexes exist, and the
        service's own start-up hooks have run (raises while the store is away)."""
        await self.mongo.admin.command("ping")
        for store in self.stores:
            await store.ensure_indexes()
        if self.timers is not None:
            await self.timers.ensure_indexes()
        for hook in self.startup:
            await hook()

    def assignment(self) -> set[TopicPartition]:
        return set(self.pipeline.consumer.assignment()) if self.pipeline is not None else set()

    async def update_lag(self) -> None:
        if self.pipeline is None:
            return
        kafka_consumer = self.pipeline.consumer
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


async def _wait_for_store(service: Service) -> None:
    while True:
        try:
            await service.prepare_store()
            return
        except Exception as e:
            log.warning("store not reachable yet, retrying", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(1)


def build_http_app(service: Service, *, title: str) -> FastAPI:
    """The service's HTTP app: its lifespan runs the service, the ops endpoints and the key guard come first."""
    production = service.settings.environment == "production"
    # No interactive docs or schema in production: they map the attack surface for anyone who asks.
    app = FastAPI(
        title=title,
        lifespan=_lifespan(service),
        docs_url=None if production else "/docs",
        redoc_url=None if production else "/redoc",
        openapi_url=None if production else "/openapi.json",
    )
    app.include_router(_ops_router(service))
    _guard(app, service, production=production)
    for router in service.routers:
        app.include_router(router)
    return app


def _lifespan(service: Service) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Start the store, the producer, the consumer and the background loops; stop them in reverse."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Each step of the start is timed in the "service started" line: the store's share must not grow with
        # history (``fulfil history`` reads it), the rest is Kafka's.
        took: dict[str, float] = {}
        t = time.perf_counter()
        await _wait_for_store(service)
        took["store_ms"], t = round((time.perf_counter() - t) * 1000, 1), time.perf_counter()
        await service.start_producer()
        pipeline = service.start_pipeline()
        if pipeline is not None:
            await pipeline.consumer.start()
        took["kafka_ms"] = round((time.perf_counter() - t) * 1000, 1)
        tasks = [asyncio.create_task(_forever(getattr(b, "__name__", "loop"), b)) for b in service.background]
        if pipeline is not None:
            tasks.append(asyncio.create_task(_forever("consumer", pipeline.run)))
        log.info("service started", inputs=list(service.inputs), port=service.settings.http_port, **took)
        try:
            yield
        finally:
            await cancelled(*tasks)
            if pipeline is not None:
                await pipeline.drain(grace=10)
                await pipeline.consumer.stop()
            await service.stop_producer()
            await service.mongo.close()
            telemetry.shutdown()

    return lifespan


def _ops_router(service: Service) -> APIRouter:
    """/health, /ready and /metrics: for probes and scrapers, open without a key."""
    router = APIRouter(tags=["ops"])

    @router.get("/health")
    async def health() -> JSONResponse:
        """The process is alive and can publish: 503 while its Kafka producer is broken (the broker rejected it and
        its replacement failed to start; the next send tries again, and a restart brings a fresh one)."""
        name = service.settings.service_name
        if service.producer_broken is not None:
            body = {"status": "producer broken", "service": name, "producer": service.producer_broken}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok", "service": name})

    @router.get("/ready")
    async def ready() -> JSONResponse:
        """Kafka and the store answer and the consumer has partitions assigned."""
        checks: dict[str, bool] = {}
        try:
            checks["store"] = bool((await service.mongo.admin.command("ping")).get("ok"))
        except Exception:
            checks["store"] = False
        checks["kafka"] = await _kafka_answers(service)
        checks["producer"] = service.producer_broken is None
        # Joined the group, with or without partitions: a spare replica is ready to take over, not unready.
        checks["consumer_joined"] = service.pipeline is None or service.pipeline.joined
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @router.get("/metrics")
    async def prometheus_metrics() -> Response:
        await service.update_lag()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def _guard(app: FastAPI, service: Service, *, production: bool) -> None:
    """Business APIs only: /health, /ready and /metrics stay open for probes and scrapers (and the docs outside
    production). The guard runs before routing, so the key is checked and the body capped before any parsing."""
    settings = service.settings
    keys = KeyStore(
        static_keys=settings.static_api_keys,
        lookup=service.mongo[settings.api_keys_database][API_KEYS_COLLECTION],
        ttl=settings.api_key_cache_seconds,
    )
    app.add_middleware(
        KeyGuard,
        keys=keys,
        required=production or settings.require_api_keys or bool(settings.static_api_keys),
        max_body_bytes=settings.max_body_bytes,
        open_paths=(OPEN_PATHS if production else OPEN_PATHS | DOC_PATHS) | service.open_paths,
    )


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run the service until SIGTERM; uvicorn drains HTTP, the lifespan stops the broker and loops."""
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
        loop="asyncio",
    )


async def _kafka_answers(service: Service) -> bool:
    try:
        await asyncio.wait_for(service.producer.client.fetch_all_metadata(), timeout=2)
        return True
    except Exception:
        return False
