"""The failure policy of every consumer, in one place.

Each service has one subscriber over its input topics that hands every record to :meth:`Consumer.handle`:

* decode; a record that can never be processed (not UTF-8, not JSON, unknown ``event_type``, schema violation,
  or anything else that breaks decoding or validation: decoding is pure, so no failure of it is an outage) goes
  straight to ``<topic>.dlq`` with the reason;
* dispatch to the service's handler for that event type (types the service does not care about are skipped);
* transient failures are retried in place with exponential backoff and jitter, which keeps per-order ordering
  because the partition waits; store or broker outages are retried until they end (they are not the message's
  fault), anything else until ``RETRY_MAX_ATTEMPTS``;
* permanent failures and exhausted retries go to ``<topic>.dlq`` with the original key, value and headers plus
  ``x-dlq-*`` headers saying where the record came from and why; then the partition moves on.

The offset is committed only after the record is processed or dead-lettered (``AckPolicy.NACK_ON_ERROR``): if
even the dead-letter publish fails, the record is redelivered. Nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
    RequestTimedOutError,
)
from pymongo.errors import AutoReconnect, ConnectionFailure, NetworkTimeout, ServerSelectionTimeoutError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from shared import metrics, telemetry, topics
from shared.events import UndecodableMessage, decode, printable
from shared.events.base import Event
from shared.kafka import header_map
from shared.settings import ServiceSettings
from shared.tasks import cancelled

log = structlog.get_logger(__name__)

E = TypeVar("E", bound=Event)
H = TypeVar("H", bound=Callable[[Any, Any], Awaitable[None]])
Handler = Callable[[Any], Awaitable[None]]
PublishRaw = Callable[[str, bytes | None, bytes, dict[str, str]], Awaitable[None]]


class TransientError(Exception):
    """A failure that may pass if tried again (a gateway 5xx, an SMTP 4xx, a timeout)."""


class Busy(TransientError):
    """Another worker holds a claim on this work. Waited out like an outage (not counted against the retry budget):
    the claim resolves, or expires and is taken over."""


class Outage(TransientError):
    """A dependency of ours is down (the SMTP server unreachable): waited out like a store or broker outage --
    it is not the message's fault, so it never uses up the retry budget or ends in a dead letter."""


class NotYet(TransientError):
    """What this event follows has not been seen yet -- after a restore or a rewind, topics are read again side by
    side, and an order's payment event may come before its placement. The record steps aside for the later
    records of its order (the placement is one of them) and is tried again after them; only if it still cannot
    be handled after ``consumer_wait_for_prior_seconds`` does it become a dead letter."""


class PermanentError(Exception):
    """A business impossibility: retrying cannot help, the record goes to the dead-letter topic."""


INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    AutoReconnect,
    ConnectionFailure,
    NetworkTimeout,
    ServerSelectionTimeoutError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
)


def is_infrastructure_outage(exc: BaseException) -> bool:
    return isinstance(exc, INFRASTRUCTURE_ERRORS)


def is_retryable(exc: BaseException) -> bool:
    return not isinstance(exc, PermanentError | UndecodableMessage)


class InvalidEvent:
    """A record of a known type that failed its schema but names a usable order (see ``on_invalid``)."""

    def __init__(self, *, record: ConsumerRecord[bytes, bytes], error: UndecodableMessage) -> None:
        import uuid

        self.order_id: str = error.order_id or ""
        self.event_type: str = error.event_type or ""
        self.errors = error.errors
        self.reason = str(error)
        raw_id = error.data.get("event_id")
        try:
            if not isinstance(raw_id, str):  # str() of a hostile structure is not to be run (deep nesting)
                raise ValueError("event_id is not a string")
            self.event_id = uuid.UUID(raw_id)
        except ValueError:
            # Derived from the bytes, so a redelivery or a replayed copy of the same bad record is a duplicate.
            digest = hashlib.sha256(record.value or b"").hexdigest()
            self.event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"invalid:{record.topic}:{digest}")


class HandlerRegistry:
    """The event types a service handles, each with one handler (``handlers.py`` fills it)."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[Any, Any], Awaitable[None]]] = {}
        self.invalid_handlers: dict[str, Callable[[InvalidEvent, Any], Awaitable[None]]] = {}

    def on_invalid(
        self,
        event_type: type[E],
    ) -> Callable[[Callable[[InvalidEvent, Any], Awaitable[None]]], Callable[[InvalidEvent, Any], Awaitable[None]]]:
        """Handle schema violations of ``event_type`` that still name a valid order (instead of dead-lettering)."""
        name = event_type.model_fields["event_type"].default

        def register(
            fn: Callable[[InvalidEvent, Any], Awaitable[None]],
        ) -> Callable[[InvalidEvent, Any], Awaitable[None]]:
            self.invalid_handlers[name] = fn
            return fn

        return register

    def on(self, event_type: type[Event]) -> Callable[[H], H]:
        """Register the decorated function for ``event_type``; stacked, one function takes several event types, each
        named where a search finds it."""
        name = event_type.model_fields["event_type"].default

        def register(fn: H) -> H:
            if name in self.handlers:
                raise ValueError(f"two handlers for {name}")
            self.handlers[name] = fn
            return fn

        return register


@dataclass
class _Failure:
    attempts: int = 0
    first: datetime | None = None
    last: datetime | None = None
    errors: list[str] = field(default_factory=list)


class Consumer:
    """Decode, dispatch and apply the failure policy to one record at a time."""

    def __init__(
        self,
        *,
        settings: ServiceSettings,
        group: str,
        registry: HandlerRegistry,
        deps: Any,
        publish_raw: PublishRaw,
    ) -> None:
        self.settings = settings
        self.group = group
        self.registry = registry
        self.deps = deps
        self.publish_raw = publish_raw

    async def handle(self, record: ConsumerRecord[bytes, bytes], *, waited: bool = False) -> None:
        """Process one record inside a consumer span that continues the producer's trace (W3C headers)."""
        headers = header_map(record)
        declared = headers.get("event_type")
        if declared is not None and self._ignores(record.topic, declared):
            # Our services name the type in a header: a record this service does not handle is counted and
            # passed by without being decoded or traced (a sixth of what the services read). The storefronts'
            # topic is not ours, so its records are always decoded: a wrong header must not hide an order.
            metrics.MESSAGES.labels(record.topic, declared, "ignored").inc()
            return
        with telemetry.tracer().start_as_current_span(
            f"{record.topic} process",
            context=telemetry.context_from_headers(headers),
            kind=telemetry.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": record.topic,
                "messaging.consumer.group.name": self.group,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
            },
        ) as span:
            await self._handle(record, headers, span, waited=waited)

    def _ignores(self, topic: str, event_type: str) -> bool:
        return (
            topic != topics.STOREFRONT_ORDERS
            and event_type not in self.registry.handlers
            and event_type not in self.registry.invalid_handlers
        )

    async def _handle(
        self, record: ConsumerRecord[bytes, bytes], headers: dict[str, str], span: Any, *, waited: bool
    ) -> None:
        topic = record.topic
        started = time.perf_counter()
        handler: Callable[[Any, Any], Awaitable[None]] | None
        try:
            try:
                event: Any = decode(topic, record.value)
            except UndecodableMessage as e:
                invalid = self.registry.invalid_handlers.get(e.event_type or "")
                if e.kind != "SchemaViolation" or invalid is None or not _usable_order_id(e.order_id):
                    raise
                event, handler = InvalidEvent(record=record, error=e), invalid
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # Whatever breaks decoding or validating a record is the record's doing (decoding is pure: no store, no
            # broker), so it is answered now with the reason -- never retried, which would hold its key for ever.
            named = e.event_type if isinstance(e, UndecodableMessage) else None
            await self.dead_letter(record, e, _Failure(1, _utcnow(), _utcnow()), event_type=named or "?")
            return
        span.set_attribute("event.type", event.event_type)
        span.set_attribute("event.id", str(event.event_id))
        span.set_attribute("order.id", event.order_id)
        if not isinstance(event, InvalidEvent):
            handler = self.registry.handlers.get(event.event_type)
            if handler is None:
                metrics.MESSAGES.labels(topic, event.event_type, "ignored").inc()
                return
        assert handler is not None
        failure = _Failure()
        bound = log.bind(order_id=event.order_id, event_id=str(event.event_id), event_type=event.event_type)
        try:
            try:
                await handler(event, self.deps)  # the common case: no retry machinery
            except Exception as first:
                if not is_retryable(first) or isinstance(first, NotYet) or self.settings.retry_max_attempts <= 1:
                    raise
                self._note_first_failure(first, failure, bound)
                await self._retry(handler, event, failure, bound)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if isinstance(e, NotYet) and not waited:
                raise  # the pipeline puts it after the later records of its order (see NotYet)
            failure.attempts += 1
            failure.first = failure.first or _utcnow()
            failure.last = _utcnow()
            bound.error("handler failed for good; dead-lettering", error=_described(e))
            await self.dead_letter(record, e, failure, event_type=event.event_type)
            return
        finally:
            metrics.HANDLER_SECONDS.labels(topic, event.event_type).observe(time.perf_counter() - started)
        metrics.MESSAGES.labels(topic, event.event_type, "processed").inc()
        bound.info(
            "event handled",
            topic=topic,
            partition=record.partition,
            offset=record.offset,
            replayed=bool(headers.get(REPLAY_HEADER)),
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def _note_first_failure(self, exc: BaseException, failure: _Failure, bound: Any) -> None:
        failure.attempts = 1
        failure.first = failure.last = _utcnow()
        metrics.RETRIES.inc()
        bound.warning("transient failure, retrying", attempt=1, error=_described(exc))

    async def _retry(
        self, handler: Callable[[Any, Any], Awaitable[None]], event: Any, failure: _Failure, bound: Any
    ) -> None:
        """Retried in place with exponential backoff and jitter (the first attempt already failed)."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_retryable),
            stop=self._stop,
            wait=wait_exponential_jitter(
                multiplier=self.settings.retry_initial_delay_seconds,
                jitter=self.settings.retry_initial_delay_seconds,
                max=self.settings.retry_max_delay_seconds,
            ),
            before_sleep=lambda rs: self._note_retry(rs, failure, bound),
            reraise=True,
        ):
            with attempt:
                await handler(event, self.deps)

    def _stop(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None and (is_infrastructure_outage(exc) or isinstance(exc, Busy | Outage)):
            return False  # an outage is nobody's fault: wait for it to end rather than bury the record
        return state.attempt_number + 1 >= self.settings.retry_max_attempts  # +1: the attempt before the loop

    @staticmethod
    def _note_retry(state: RetryCallState, failure: _Failure, bound: Any) -> None:
        exc = state.outcome.exception() if state.outcome else None
        failure.attempts = state.attempt_number + 1
        failure.first = failure.first or _utcnow()
        failure.last = _utcnow()
        metrics.RETRIES.inc()
        bound.warning(
            "transient failure, retrying",
            attempt=state.attempt_number,
            error=_described(exc),
            wait_s=round(state.upcoming_sleep, 2),
        )

    async def dead_letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        error: BaseException,
        failure: _Failure,
        *,
        event_type: str,
    ) -> None:
        kind = error.kind if isinstance(error, UndecodableMessage) else type(error).__name__
        reason = printable(str(error), 1000)  # encodable whatever the record held (a lone surrogate, say)
        headers = header_map(record)
        headers.update(
            {
                "x-dlq-original-topic": record.topic,
                "x-dlq-original-partition": str(record.partition),
                "x-dlq-original-offset": str(record.offset),
                "x-dlq-original-timestamp": str(record.timestamp),
                "x-dlq-service": self.settings.service_name,
                "x-dlq-group": self.group,
                "x-dlq-error-class": kind,
                "x-dlq-error-message": reason,
                "x-dlq-attempts": str(max(failure.attempts, 1)),
                "x-dlq-first-failure-at": (failure.first or _utcnow()).isoformat(),
                "x-dlq-last-failure-at": (failure.last or _utcnow()).isoformat(),
            }
        )
        value = record.value or b""
        try:
            await self.publish_raw(topics.dlq(record.topic), record.key, value, headers)
        except MessageSizeTooLargeError:
            # The record with our headers is over the producer's (or the broker's) size limit: kept, it would be
            # tried again for ever. It stays on its own topic until retention; the dead letter says where and what.
            ours = {k: v for k, v in headers.items() if k.startswith("x-dlq-")}
            ours["x-dlq-value-omitted"] = (
                f"{len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()}, and the record's own headers: too "
                "large to dead-letter whole; read it at its original topic, partition and offset"
            )
            key = record.key if record.key is None or len(record.key) <= 1024 else None
            await self.publish_raw(topics.dlq(record.topic), key, b"", ours)
        metrics.MESSAGES.labels(record.topic, event_type, "dead_lettered").inc()
        metrics.DEAD_LETTERS.labels(record.topic, kind).inc()
        log.warning(
            "record dead-lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error_class=kind,
            reason=reason[:300],
        )


REPLAY_HEADER = "x-replay"


def _usable_order_id(order_id: str | None) -> bool:
    return bool(order_id) and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", order_id or "") is not None


def _described(exc: BaseException | None) -> str:
    """An exception for a log line: its class and message, cut short and encodable (it may quote the record)."""
    return printable(f"{type(exc).__name__}: {exc}", 1000)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Pipeline(ConsumerRebalanceListener):  # type: ignore[misc]
    """Consume in batches; work on different orders at once, on one order's events strictly one after another.

    Records are queued per key (the order id), and each key's queue is worked by its own task, so a slow or retried
    record holds up only its own order while the rest of its partition moves on. Per partition, the committed
    offset is the one below which every record is done (processed or dead-lettered): a crash redelivers at most
    the records after the oldest unfinished one, which the inbox makes harmless. At most ``max_in_flight``
    records are held; beyond that, fetching pauses.

    Why aiokafka and not a FastStream subscriber: FastStream's subscribers (0.7) call a handler per message, or per
    polled batch, and acknowledge in that order; neither runs the keys of one partition concurrently with a
    commit point that trails the oldest unfinished record, and the store round trip per record was the wall
    (1.4 orders/s measured, see docs/performance.md). FastStream still describes the topics for AsyncAPI.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        handle: Callable[..., Awaitable[None]],
        *,
        max_in_flight: int,
        commit_interval: float = 0.2,
        revoke_timeout: float = 20.0,
        wait_for_prior: float = 300.0,
    ) -> None:
        self.consumer = consumer
        self.handle = handle  # handle(record), or handle(record, waited=True) for a NotYet whose wait is over
        self.wait_for_prior = wait_for_prior
        self.waiting_since: dict[tuple[TopicPartition, int], float] = {}
        self.max_in_flight = max_in_flight
        self.commit_interval = commit_interval
        self.revoke_timeout = revoke_timeout
        self.lanes: dict[bytes, deque[tuple[TopicPartition, ConsumerRecord[bytes, bytes]]]] = {}
        self.outstanding: dict[TopicPartition, deque[int]] = {}
        self.done: dict[TopicPartition, set[int]] = {}
        self.commit_points: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.in_flight = 0
        self.joined = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- rebalance -------------------------------------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Give the work in hand a chance to finish and commit it before another member takes the partitions."""
        deadline = asyncio.get_running_loop().time() + self.revoke_timeout
        while any(self.outstanding.get(tp) for tp in revoked):
            if asyncio.get_running_loop().time() > deadline:
                log.warning("partitions revoked with work in flight", partitions=[str(tp) for tp in revoked])
                break
            await asyncio.sleep(0.05)
        with contextlib.suppress(Exception):
            await self._commit(only=revoked)
        for tp in revoked:
            self.outstanding.pop(tp, None)
            self.done.pop(tp, None)
            self.commit_points.pop(tp, None)
            self.committed.pop(tp, None)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.joined = True
        for tp in assigned:
            self.outstanding.setdefault(tp, deque())
            self.done.setdefault(tp, set())

    # -- the loop --------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last_commit = loop.time()
        paused = False
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            for tp, records in batch.items():
                for record in records:
                    self._submit(tp, record)
            if self.in_flight >= self.max_in_flight and not paused:
                self.consumer.pause(*self.consumer.assignment())
                paused = True
            elif paused and self.in_flight < self.max_in_flight // 2:
                self.consumer.resume(*self.consumer.assignment())
                paused = False
            if loop.time() - last_commit >= self.commit_interval:
                last_commit = loop.time()
                try:
                    await self._commit()
                except Exception as e:  # a rebalance or a broker hiccup: the next round commits again
                    log.warning("offset commit failed, will retry", error=f"{type(e).__name__}: {e}")

    async def drain(self, grace: float) -> None:
        """Wait (bounded) for the records in hand, then commit them: a clean shutdown redelivers nothing."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        with contextlib.suppress(Exception):
            await self._commit()
        await cancelled(*self._tasks)  # what is left is redelivered to whoever takes the partitions

    def _submit(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        if tp not in self.outstanding:
            return  # revoked meanwhile
        self.outstanding[tp].append(record.offset)
        self.in_flight += 1
        self._idle.clear()
        key = record.key if record.key is not None else f"\x00{tp.topic}:{tp.partition}".encode()
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = deque()
            task = asyncio.get_running_loop().create_task(self._work(key, lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        lane.append((tp, record))

    async def _work(self, key: bytes, lane: deque[tuple[TopicPartition, ConsumerRecord[bytes, bytes]]]) -> None:
        delay = 0.2
        stepped_aside = 0  # records of this lane set aside (NotYet) since one was last handled
        loop = asyncio.get_running_loop()
        while lane:
            tp, record = lane[0]
            if tp in self.outstanding:  # still ours (a revoked partition's records are left to its new owner)
                since = self.waiting_since.get((tp, record.offset))
                waited = since is not None and loop.time() - since >= self.wait_for_prior
                try:
                    await (self.handle(record, waited=True) if waited else self.handle(record))
                except asyncio.CancelledError:
                    raise
                except NotYet as e:
                    self.waiting_since.setdefault((tp, record.offset), loop.time())
                    stepped_aside += 1
                    if stepped_aside >= len(lane):  # nothing left that could be what it waits for: pause
                        log.info(
                            "record waits for what it follows",
                            topic=tp.topic,
                            offset=record.offset,
                            why=printable(str(e), 300),
                        )
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
                        stepped_aside = 0
                    lane.rotate(-1)  # after the later records of its order
                    continue
                except Exception as e:  # even the dead-letter publish failed: keep the record and try again
                    log.error("record not processed, retrying", topic=tp.topic, error=_described(e))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                self.waiting_since.pop((tp, record.offset), None)
                self._finish(tp, record.offset)
            lane.popleft()
            self.in_flight -= 1
            delay = 0.2
            stepped_aside = 0
        del self.lanes[key]
        if self.in_flight == 0:
            self._idle.set()

    def _finish(self, tp: TopicPartition, offset: int) -> None:
        outstanding, done = self.outstanding.get(tp), self.done.get(tp)
        if outstanding is None or done is None:
            return
        done.add(offset)
        while outstanding and outstanding[0] in done:
            done.discard(outstanding[0])
            self.commit_points[tp] = outstanding.popleft() + 1

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        offsets = {
            tp: point
            for tp, point in self.commit_points.items()
            if (only is None or tp in only) and self.committed.get(tp) != point
        }
        if offsets:
            await self.consumer.commit(offsets)
            self.committed.update(offsets)
