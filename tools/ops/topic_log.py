"""The topics as a log to read and write back: scans, an order's timeline, dead letters, replays and rewinds.

Reading is always done without a consumer group (assign + seek), so inspecting a topic never moves any
service's offsets. Writing back (redrive, republish) keeps the original key -- hence the partition and the
per-order ordering -- and the original headers, and adds ``x-replay`` headers so a replayed record can be told
apart. Replays are safe because every consumer deduplicates on ``event_id`` and every side effect is idempotent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.admin import RecordsToDelete
from aiokafka.structs import OffsetAndMetadata

from shared import topics
from shared.consumer import REPLAY_HEADER
from shared.events import UndecodableMessage, decode
from shared.events.storefront import redact_card_numbers
from shared.kafka import header_map, new_admin, new_consumer, new_producer
from shared.logging import mask_value
from shared.settings import ServiceSettings
from tools.ops import audit
from tools.ops.settings import kafka_settings

# Where a query reads: the tools' settings, or a bootstrap address (None: the environment's) that keeps the
# environment's security options (tools.ops.settings).
Kafka = ServiceSettings | str | None
DLQ_PREFIX = "x-dlq-"


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


@dataclass
class Rec:
    """One Kafka record as the operator sees it."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: str | None
    value: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp / 1000, tz=UTC)

    def json(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.value)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    @classmethod
    def of(cls, r: ConsumerRecord[bytes, bytes]) -> Rec:
        return cls(
            topic=r.topic,
            partition=r.partition,
            offset=r.offset,
            timestamp=r.timestamp,
            key=r.key.decode("utf-8", "replace") if r.key is not None else None,
            value=r.value or b"",
            headers=header_map(r),
        )


async def partitions(kafka: Kafka, topic_names: Iterable[str]) -> list[TopicPartition]:
    """The partitions of the named topics that exist (unknown names are left out)."""
    admin = new_admin(kafka_settings(kafka))
    await admin.start()
    try:
        described = await admin.describe_topics(list(topic_names))
    finally:
        await admin.close()
    return [
        TopicPartition(t["topic"], p["partition"])
        for t in described
        if t.get("error_code", 0) == 0
        for p in sorted(t["partitions"], key=lambda p: p["partition"])
    ]


async def scan(
    kafka: Kafka,
    topic_names: Iterable[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    key: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AsyncIterator[Rec]:
    """Every record of the topics from ``since`` up to the end as it was when the scan began."""
    parts = await partitions(kafka, topic_names)
    if not parts:
        return
    consumer = new_consumer(kafka_settings(kafka), enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        starts = await consumer.beginning_offsets(parts)
        if since is not None:
            found = await consumer.offsets_for_times({tp: _ms(since) for tp in parts})
            starts = {tp: (found[tp].offset if found.get(tp) else ends[tp]) for tp in parts}
        for tp in parts:
            consumer.seek(tp, starts[tp])
        todo = {tp for tp in parts if starts[tp] < ends[tp]}
        total = sum(ends[tp] - starts[tp] for tp in parts)
        done = 0
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        todo.discard(tp)
                        break
                    done += 1
                    if until is not None and r.timestamp > _ms(until):
                        continue
                    if key is None or (r.key or b"").decode("utf-8", "replace") == key:
                        yield Rec.of(r)
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
            if progress is not None:
                progress(done, total)
    finally:
        await consumer.stop()


# ------------------------------------------------------------------ dead letters


@dataclass
class DeadLetter:
    rec: Rec

    @property
    def id(self) -> str:
        return self.rec.id

    def header(self, name: str) -> str:
        return self.rec.headers.get(DLQ_PREFIX + name, "")

    @property
    def original_topic(self) -> str:
        return self.header("original-topic") or self.rec.topic.removesuffix(topics.DLQ_SUFFIX)

    @property
    def error_class(self) -> str:
        return self.header("error-class")

    def summary(self) -> dict[str, Any]:
        data = self.rec.json() or {}
        return {
            "id": self.id,
            "dead_lettered_at": self.rec.at.isoformat(),
            "order_id": self.rec.key,
            "original": f"{self.original_topic}:{self.header('original-partition')}:{self.header('original-offset')}",
            "event_type": data.get("event_type"),
            "service": self.header("service"),
            "error_class": self.error_class,
            "error_message": self.header("error-message"),
            "attempts": self.header("attempts"),
            "redriven": bool(self.rec.headers.get("x-redriven-from")),
        }

    def full(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "group": self.header("group"),
            "first_failure_at": self.header("first-failure-at"),
            "last_failure_at": self.header("last-failure-at"),
            "original_timestamp": self.header("original-timestamp"),
            "headers": self.rec.headers,
            "value": self.rec.value.decode("utf-8", "replace"),
        }


def dlq_topics(topic: str | None) -> list[str]:
    if topic is None:
        return [topics.dlq(t) for t in topics.MAIN_TOPICS]
    return [topic if topic.endswith(topics.DLQ_SUFFIX) else topics.dlq(topic)]


async def dead_letters(
    kafka: Kafka,
    *,
    topic: str | None = None,
    since: datetime | None = None,
    order_id: str | None = None,
    error: str | None = None,
    ids: set[str] | None = None,
) -> list[DeadLetter]:
    out = []
    async for rec in scan(kafka, dlq_topics(topic), since=since, key=order_id):
        dl = DeadLetter(rec)
        if error and dl.error_class != error:
            continue
        if ids and dl.id not in ids:
            continue
        out.append(dl)
    return out


def replay_headers(original: dict[str, str], *, reason: str, source: str) -> list[tuple[str, bytes]]:
    kept = {k: v for k, v in original.items() if not k.startswith(DLQ_PREFIX) and not k.startswith("x-replay")}
    kept.update({REPLAY_HEADER: reason, "x-replay-source": source, "x-replayed-at": datetime.now(UTC).isoformat()})
    return [(k, v.encode()) for k, v in kept.items()]


async def republish(kafka: Kafka, items: list[tuple[str, Rec, str]]) -> int:
    """Publish (target topic, record, reason) with the record's key and value; returns how many were sent."""
    producer = new_producer(kafka_settings(kafka), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for target, rec, reason in items:
            await producer.send_and_wait(
                target,
                rec.value,
                key=rec.key.encode() if rec.key is not None else None,
                headers=replay_headers(rec.headers, reason=reason, source=rec.id),
            )
    finally:
        await producer.stop()
    return len(items)


async def purge_plan(kafka: Kafka, selected: list[DeadLetter]) -> tuple[dict[TopicPartition, int], list[str]]:
    """Kafka deletes only whole prefixes of a partition: purge up to the first record that was not selected.

    Returns (partition -> delete-before offset, ids that must stay because an unselected record precedes them).
    """
    chosen = {d.id for d in selected}
    by_partition: dict[TopicPartition, list[Rec]] = {}
    async for rec in scan(kafka, sorted({d.rec.topic for d in selected})):
        by_partition.setdefault(TopicPartition(rec.topic, rec.partition), []).append(rec)
    plan: dict[TopicPartition, int] = {}
    kept: list[str] = []
    for tp, recs in by_partition.items():
        cut = None
        for rec in recs:
            if rec.id not in chosen:
                break
            cut = rec.offset + 1
        if cut is not None:
            plan[tp] = cut
        kept += [r.id for r in recs if r.id in chosen and (cut is None or r.offset >= cut)]
    return plan, kept


async def delete_before(kafka: Kafka, plan: dict[TopicPartition, int]) -> None:
    admin = new_admin(kafka_settings(kafka))
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(before_offset=o) for tp, o in plan.items()})
    finally:
        await admin.close()


async def redrive(kafka: Kafka, letters: list[DeadLetter], *, audit_log: Any, **who: Any) -> int:
    """Send dead letters back to their topics and audit it: ``fulfil dlq`` and the console leave the same trail."""
    sent = await republish(kafka, [(d.original_topic, d.rec, "redrive") for d in letters])
    audit.write("dlq redrive", audit_log, **who, records=[d.id for d in letters])
    return sent


async def purge(
    kafka: Kafka,
    letters: list[DeadLetter],
    plan: dict[TopicPartition, int],
    kept: list[str],
    *,
    audit_log: Any,
    **who: Any,
) -> int:
    """Delete what ``purge_plan`` allows and audit it (with what had to stay); returns how many were deleted."""
    if plan:
        await delete_before(kafka, plan)
    removable = [d.id for d in letters if d.id not in kept]
    audit.write("dlq purge", audit_log, **who, records=removable, kept=kept)
    return len(removable) if plan else 0


# ------------------------------------------------------------------ replay by offsets


@dataclass
class OffsetMove:
    partition: int
    current: int | None
    target: int
    end: int

    @property
    def records_to_reread(self) -> int:
        return max((self.current if self.current is not None else self.end) - self.target, 0)


class GroupActive(Exception):
    """The consumer group has live members; its offsets cannot be moved under it."""


async def group_members(kafka: Kafka, group: str) -> list[str]:
    admin = new_admin(kafka_settings(kafka))
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    members: list[str] = []
    for resp in described:
        for g in getattr(resp, "groups", []):
            # (error_code, group_id, state, protocol_type, protocol, members, ...)
            members += [m[1] + "@" + m[2] for m in g[5]]
    return members


async def plan_rewind(kafka: Kafka, *, topic: str, group: str, since: datetime) -> list[OffsetMove]:
    parts = await partitions(kafka, [topic])
    if not parts:
        raise ValueError(f"topic {topic} does not exist")
    consumer = new_consumer(kafka_settings(kafka), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        found = await consumer.offsets_for_times({tp: _ms(since) for tp in parts})
        moves = []
        for tp in parts:
            committed = await consumer.committed(tp)
            target = found[tp].offset if found.get(tp) else ends[tp]
            moves.append(OffsetMove(tp.partition, committed, target, ends[tp]))
        return moves
    finally:
        await consumer.stop()


async def rewind(kafka: Kafka, *, topic: str, group: str, moves: list[OffsetMove]) -> None:
    members = await group_members(kafka, group)
    if members:
        raise GroupActive(", ".join(members))
    consumer = new_consumer(kafka_settings(kafka), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, m.partition) for m in moves]
        consumer.assign(parts)
        await consumer.commit(
            {TopicPartition(topic, m.partition): OffsetAndMetadata(m.target, "fulfil replay") for m in moves}
        )
    finally:
        await consumer.stop()


def decodable(topic: str, value: bytes) -> bool:
    try:
        decode(topic, value)
    except UndecodableMessage:
        return False
    return True


def masked_dead_letter(full: dict[str, Any]) -> dict[str, Any]:
    """A dead letter as ``dlq show`` prints it: personal fields masked, card numbers removed (key included)."""
    out = dict(full)
    try:
        out["value"] = json.dumps(mask_value(json.loads(full["value"])), ensure_ascii=False)
    except ValueError:
        out["value"] = mask_value(full["value"], "value")
    out["headers"] = {k: mask_value(v, k) for k, v in full["headers"].items()}
    if out.get("order_id"):
        out["order_id"] = redact_card_numbers(out["order_id"])
    return out


def timeline(records: Iterable[Any]) -> list[dict[str, Any]]:
    """An order's records across topics as its timeline, oldest first, each naming the event that caused it
    (``caused_by``: the causing event's type, or the first characters of its id when that event is not here)."""
    events = []
    for rec in records:
        data = rec.json() or {}
        events.append(
            {
                "topic": rec.topic,
                "partition": rec.partition,
                "offset": rec.offset,
                "at": rec.at.isoformat(timespec="milliseconds"),
                "event_type": data.get("event_type", "(undecodable)"),
                "event_id": data.get("event_id"),
                "causation_id": data.get("causation_id"),
                "replayed": bool(rec.headers.get(REPLAY_HEADER)),
                "dead_letter": rec.topic.endswith(topics.DLQ_SUFFIX),
                "why": rec.headers.get("x-dlq-error-class"),
            }
        )
    events.sort(key=lambda e: (e["at"], e["topic"], e["offset"]))
    types = {e["event_id"]: e["event_type"] for e in events if e["event_id"]}
    for e in events:
        cause = e["causation_id"]
        e["caused_by"] = types.get(cause, cause[:8] if cause else "")
    return events
