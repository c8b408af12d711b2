"""The watch hub: how an order-service copy learns that an order with an open stream changed, without polling.

The copy serving a stream is often not the copy that handled the event, so the hub does not listen to its own
handlers: while at least one stream is open it tails the topics whose records change an order's view (the order
service's inputs and ``order.events``) with one consumer per process -- no consumer group, every partition
assigned by hand, starting at the end, nothing committed. Records are keyed by order id; a record whose key has
no open stream costs a dict lookup. For a watched key the hub re-reads the order (``OrderStore.read``, the newest
version exactly) at once and, since the handler of that record may not have written yet, once or twice more
shortly after until the version moves; versions skipped in between are read one by one (a lookup by ``_id``), so
a stream sees every stage. Each new version is put on the asyncio queue of every stream on that order.

A stream subscribes *before* the endpoint reads the order, so a change written between the two is never lost: a
record that goes by once it is subscribed makes the hub read again. A new stream costs one read (the endpoint's),
and one more only if a record of its order went by in the last second or so; an idle stream costs a queue
waiting: no timers, no store reads. A change is always delivered: the terminal states are written before their
``order.events`` record is published, and an intermediate change that the quick re-reads missed (a lagging
handler) is sent, in order, with the next one found. The tail stops a little after the last stream closes, and on
shutdown.

Streams are counted per caller (:meth:`WatchHub.admit`): the order API refuses a caller's stream beyond its limit
(``ORDER_STREAM_MAX_PER_CALLER``, per copy of the service), so one storefront cannot hold every queue and socket.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.order.domain import Order
from services.order.store import OrderStore
from shared.kafka import client_options
from shared.mongo import Loaded
from shared.settings import ServiceSettings
from shared.tasks import cancelled

log = structlog.get_logger(__name__)

FOLLOW_UPS = (0.1, 0.5)  # seconds after a record: re-reads while its handler may not have written yet
CATCH_UP_SECONDS = 0.25  # a new stream's one extra read: a record seen just before it was watched
RECENT_SECONDS = 1.0  # how long a record's key counts as "just seen" (for at least this, at most twice this)
MAX_GAP = 50  # versions read one by one between two reads; beyond that only the newest is sent
IDLE_STOP_SECONDS = 5.0  # the tail outlives the last stream this long (a reconnecting client finds it running)
POLL_MS = 500
UNREAD = -1  # the version of a watch no one has read yet (its first stream subscribes before it reads)


def tail_consumer(settings: ServiceSettings) -> AIOKafkaConsumer:
    """A consumer outside any group: it takes no partitions from the service's own group and commits nothing."""
    return AIOKafkaConsumer(
        **client_options(settings),
        client_id=f"{settings.service_name}-watch",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        fetch_max_wait_ms=100,
        max_poll_records=2000,
    )


@dataclass(eq=False)
class Watch:
    """The open streams of one order, and what the hub last sent them."""

    order_id: str
    version: int  # newest version put on the queues (or read by the first stream); UNREAD before either
    queues: set[asyncio.Queue[Loaded[Order]]] = field(default_factory=set)
    dirty: bool = False  # something may have changed since the last read
    follow: bool = False  # ... because of a record: look again shortly if the version has not moved
    task: asyncio.Task[None] | None = None


class WatchHub:
    """One per process: the tail consumer and the streams' queues, by order id (see the module docstring)."""

    def __init__(
        self,
        *,
        store: OrderStore,
        settings: ServiceSettings,
        topics: Sequence[str],
        consumer_factory: Callable[[ServiceSettings], AIOKafkaConsumer] = tail_consumer,
        idle_stop_seconds: float = IDLE_STOP_SECONDS,
    ) -> None:
        self.store = store
        self.settings = settings
        self.topics = tuple(topics)
        self.consumer_factory = consumer_factory
        self.idle_stop_seconds = idle_stop_seconds
        self.watches: dict[bytes, Watch] = {}
        self.live = asyncio.Event()  # the tail is positioned: every record from now on is seen
        self._wanted = asyncio.Event()  # at least one stream is open
        # Keys of the records of the last 1-2 s (two rotating sets): a new stream on one of them looks once more.
        self._recent: set[bytes] = set()
        self._recent_before: set[bytes] = set()
        self.per_caller: Counter[str] = Counter()  # open streams per caller (see admit)

    @property
    def streams(self) -> int:
        return sum(len(w.queues) for w in self.watches.values())

    def admit(self, caller: str, limit: int) -> bool:
        """Count one more open stream of ``caller``, unless it has ``limit`` open already (then False)."""
        if self.per_caller[caller] >= limit:
            return False
        self.per_caller[caller] += 1
        return True

    def release(self, caller: str) -> None:
        """One stream of ``caller`` closed."""
        self.per_caller[caller] -= 1
        if self.per_caller[caller] <= 0:
            del self.per_caller[caller]

    def subscribe(self, order_id: str, *, version: int | None = None) -> asyncio.Queue[Loaded[Order]]:
        """A queue that receives each version of the order after ``version`` until :meth:`unsubscribe`; versions
        other streams were sent meanwhile may come too (a stream skips them). Subscribe first, then read the order
        and tell the hub what was read (:meth:`read_by_stream`): a change between the two then reaches the queue;
        read first, and a change whose record went by before the subscription would be lost."""
        key = order_id.encode()
        watch = self.watches.get(key)
        if watch is None:
            watch = self.watches[key] = Watch(order_id=order_id, version=UNREAD if version is None else version)
        queue: asyncio.Queue[Loaded[Order]] = asyncio.Queue()
        watch.queues.add(queue)
        self._wanted.set()
        if not self.live.is_set() or key in self._recent or key in self._recent_before:
            # A record of this order went by unwatched (or may have): its write may come after the caller's read.
            self._touch(watch, follow=False)
        return queue

    def read_by_stream(self, order_id: str, version: int) -> None:
        """A stream that subscribed has read ``version``: where a watch no one had read yet starts from."""
        watch = self.watches.get(order_id.encode())
        if watch is not None and watch.version == UNREAD:
            watch.version = version

    def unsubscribe(self, order_id: str, queue: asyncio.Queue[Loaded[Order]]) -> None:
        key = order_id.encode()
        watch = self.watches.get(key)
        if watch is None:
            return
        watch.queues.discard(queue)
        if not watch.queues:
            del self.watches[key]
            if watch.task is not None:
                watch.task.cancel()

    def seen(self, key: bytes) -> None:
        """A record keyed ``key`` went by: if that order is watched, read it (now and shortly after)."""
        watch = self.watches.get(key)
        if watch is not None:
            self._touch(watch, follow=True)

    def _touch(self, watch: Watch, *, follow: bool) -> None:
        watch.dirty = True
        watch.follow = watch.follow or follow
        if watch.task is None:
            watch.task = asyncio.get_running_loop().create_task(self._refresh(watch))

    async def _refresh(self, watch: Watch) -> None:
        """Read until nothing is pending: at once, then (after a record) again until the version moves."""
        try:
            if not self.live.is_set():
                await self.live.wait()
            while watch.dirty and watch.queues:
                watch.dirty, follow = False, watch.follow
                watch.follow = False
                seen = watch.version
                delays = (0.0, *FOLLOW_UPS) if follow else (CATCH_UP_SECONDS,)
                for delay in delays:
                    if delay:
                        await asyncio.sleep(delay)
                    await self._read(watch)
                    if watch.version > seen or watch.dirty:
                        break
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the store is away: the next record (or a reconnecting client) reads again
            log.warning("order stream refresh failed", order_id=watch.order_id, error=f"{type(e).__name__}: {e}")
        finally:
            watch.task = None

    async def _read(self, watch: Watch) -> None:
        loaded = await self.store.read(order_id=watch.order_id)
        if loaded.state is None or loaded.version <= watch.version:
            return
        versions = [loaded]
        if watch.version != UNREAD and loaded.version - watch.version > 1:
            # the versions in between, so each change reaches the streams (a jump of many sends only the newest)
            start = max(watch.version + 1, loaded.version - MAX_GAP)
            order_id = watch.order_id
            between = [await self.store.version(order_id=order_id, version=v) for v in range(start, loaded.version)]
            versions = [*(v for v in between if v is not None and v.state is not None), loaded]
        for v in versions:
            for queue in watch.queues:
                queue.put_nowait(v)
        watch.version = loaded.version

    async def run(self) -> None:
        """The tail: started when a stream opens, stopped a little after the last one closes (background loop)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wanted.wait()
            consumer = self.consumer_factory(self.settings)
            try:
                await consumer.start()
                parts = await self._assign_at_end(consumer)
                self.live.set()
                for watch in list(self.watches.values()):  # records may have gone by while no tail was running
                    self._touch(watch, follow=False)
                log.info("order stream tail started", partitions=len(parts), streams=self.streams)
                idle_since: float | None = None
                rotated = loop.time()
                while True:
                    batch = await consumer.getmany(timeout_ms=POLL_MS)
                    if loop.time() - rotated >= RECENT_SECONDS:
                        self._recent_before, self._recent, rotated = self._recent, set(), loop.time()
                    for records in batch.values():
                        for record in records:
                            if record.key is not None:
                                self._recent.add(record.key)
                                self.seen(record.key)
                    if self.watches:
                        idle_since = None
                    elif idle_since is None:
                        idle_since = loop.time()
                    elif loop.time() - idle_since >= self.idle_stop_seconds:
                        break
            finally:
                self.live.clear()
                self._recent, self._recent_before = set(), set()
                if not self.watches:
                    self._wanted.clear()
                await cancelled(*[w.task for w in self.watches.values() if w.task is not None])
                await consumer.stop()
                log.info("order stream tail stopped", streams=self.streams)

    async def _assign_at_end(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        """Every partition of the watched topics, positioned at the end now (so "live" means what it says)."""
        # A consumer outside a group learns partitions from the cluster's metadata (as the bench's reader does).
        await consumer._client.force_metadata_update()
        missing = [t for t in self.topics if not consumer.partitions_for_topic(t)]
        if missing:
            raise LookupError(f"topics not found: {missing} (run `fulfil topics apply`)")
        parts = [TopicPartition(t, p) for t in self.topics for p in sorted(consumer.partitions_for_topic(t))]
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)
        for tp in parts:
            await consumer.position(tp)
        return parts
