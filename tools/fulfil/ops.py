"""What the ``fulfil`` operator commands do against Kafka, kept apart from their terminal rendering.

Reading is always done without a consumer group (assign + seek), so inspecting a topic never moves any
service's offsets. Writing back (redrive, republish) keeps the original key -- hence the partition and the
per-order ordering -- and the original headers, and adds ``x-replay`` headers so a replayed record can be told
apart. Replays are safe because every consumer deduplicates on ``event_id`` and every side effect is idempotent.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.admin import RecordsToDelete
from aiokafka.structs import OffsetAndMetadata

from shared import topics
from shared.consumer import REPLAY_HEADER
from shared.events import UndecodableMessage, decode
from shared.kafka import header_map, new_admin, new_consumer, new_producer
from shared.settings import ServiceSettings
from tools.fulfil.settings import kafka_settings

# Where a query reads: the tools' settings, or a bootstrap address (None: the environment's) that keeps the
# environment's security options (tools.fulfil.settings).
Kafka = ServiceSettings | str | None
DLQ_PREFIX = "x-dlq-"


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """``2026-11-25T08:00:00Z``, a date, ``earliest``, or an age such as ``90s``, ``10m``, ``2h``, ``7d``."""
    now = now or datetime.now(UTC)
    text = text.strip()
    if text == "earliest":
        return datetime(1970, 1, 1, tzinfo=UTC)
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text):
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now - timedelta(**{unit: float(m.group(1))})
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"cannot read time {text!r}: use ISO 8601, 'earliest' or an age like 10m, 2h, 7d") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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
    audit("dlq redrive", audit_log, **who, records=[d.id for d in letters])
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
    audit("dlq purge", audit_log, **who, records=removable, kept=kept)
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


# ------------------------------------------------------------------ topic settings: incremental, never less durable

# Settings whose lower value loses data or weakens acknowledgements: `topics apply` never lowers them.
NEVER_LOWERED = ("min.insync.replicas", "retention.ms", "retention.bytes", "unclean.leader.election.enable")
DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs config_source: set on the topic itself (not a broker default)


def _durability(name: str, value: str) -> float:
    """A comparable measure of how durable a setting's value is (higher = keeps more, acknowledges safer)."""
    if name == "unclean.leader.election.enable":
        return 0.0 if value.strip().lower() == "true" else 1.0
    number = int(value)
    return float("inf") if number < 0 and name.startswith("retention") else float(number)


def merge_topic_config(
    effective: dict[str, str], overrides: dict[str, str], desired: dict[str, str]
) -> tuple[dict[str, str], list[str]]:
    """The full override set to send for one topic, and notes on what was kept.

    Kafka's AlterConfigs (aiokafka has no incremental variant) replaces a topic's overrides with the set it is
    given, so the set starts from the topic's current overrides -- a setting the file does not name is kept --
    and takes the file's values, except that a durability setting is never made weaker than it is now.
    """
    merged = dict(overrides)
    notes: list[str] = []
    for name, value in desired.items():
        value = str(value)
        current = effective.get(name)
        if current is not None and name in NEVER_LOWERED and _durability(name, value) < _durability(name, current):
            notes.append(f"kept {name}={current} (the file says {value}; durability is never lowered)")
            continue
        merged[name] = value
    return merged, notes


@dataclass
class TopicChanges:
    create: list[dict[str, Any]] = field(default_factory=list)
    grow: dict[str, int] = field(default_factory=dict)
    alter: dict[str, dict[str, str]] = field(default_factory=dict)
    diffs: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.create or self.grow or self.alter)

    def lines(self) -> list[str]:
        out = [
            f"create {t['name']} ({t['partitions']} partitions, replication {t['replication_factor']})"
            for t in self.create
        ]
        out += [f"grow {name} to {n} partitions" for name, n in self.grow.items()]
        out += [f"configure {name}: {', '.join(self.diffs[name])}" for name in self.alter]
        return out


async def plan_topics(kafka: Kafka, plan: list[dict[str, Any]]) -> TopicChanges:
    """What ``topics apply`` would change: missing topics, partitions to add, settings to alter (and keep)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = new_admin(kafka_settings(kafka), request_timeout_ms=10_000)
    await admin.start()
    changes = TopicChanges()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics() if t.get("error_code", 0) == 0}
        existing = [t for t in plan if t["name"] in described]
        changes.create = [t for t in plan if t["name"] not in described]
        configs: dict[str, list[dict[str, Any]]] = {}
        if existing:
            for resp in await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, t["name"]) for t in existing]
            ):
                for res in resp.to_object()["resources"]:
                    if res["error_code"]:
                        raise RuntimeError(
                            f"cannot read the settings of {res['resource_name']}: {res['error_message']}"
                        )
                    configs[res["resource_name"]] = res["config_entries"]
        for t in existing:
            parts = described[t["name"]]["partitions"]
            if len(parts) < t["partitions"]:
                changes.grow[t["name"]] = t["partitions"]
            replicas = len(parts[0]["replicas"]) if parts else 0
            if replicas > t["replication_factor"]:
                changes.notes.append(
                    f"kept {t['name']} replication {replicas} (the file says {t['replication_factor']})"
                )
            elif replicas < t["replication_factor"]:
                changes.notes.append(
                    f"{t['name']} has replication {replicas}, the file says {t['replication_factor']}: "
                    "raising it needs a partition reassignment (kafka-reassign-partitions), not done here"
                )
            entries = configs.get(t["name"], [])
            effective = {e["config_names"]: e["config_value"] for e in entries if e["config_value"] is not None}
            overrides = {
                e["config_names"]: e["config_value"]
                for e in entries
                if e.get("config_source") == DYNAMIC_TOPIC_CONFIG and e["config_value"] is not None
            }
            merged, notes = merge_topic_config(effective, overrides, {k: str(v) for k, v in t["config"].items()})
            changes.notes += [f"{t['name']}: {n}" for n in notes]
            if merged != overrides:
                changes.alter[t["name"]] = merged
                changes.diffs[t["name"]] = [
                    f"{k} {effective.get(k, '(default)')} -> {v}" for k, v in merged.items() if overrides.get(k) != v
                ]
    finally:
        await admin.close()
    return changes


async def apply_topics(kafka: Kafka, changes: TopicChanges) -> None:
    from aiokafka.admin import NewPartitions, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = new_admin(kafka_settings(kafka), request_timeout_ms=10_000)
    await admin.start()
    try:
        if changes.create:
            await admin.create_topics(
                [
                    NewTopic(t["name"], t["partitions"], t["replication_factor"], topic_configs=t["config"])
                    for t in changes.create
                ]
            )
        if changes.grow:
            await admin.create_partitions({name: NewPartitions(n) for name, n in changes.grow.items()})
        if changes.alter:
            responses = await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name, configs=c) for name, c in changes.alter.items()]
            )
            for resp in responses:
                for res in resp.to_object().get("resources", []):
                    if res["error_code"]:
                        raise RuntimeError(f"altering {res['resource_name']} failed: {res['error_message']}")
    finally:
        await admin.close()


# ------------------------------------------------------------------ personal data: masking, audit, erasure


def masked_dead_letter(full: dict[str, Any]) -> dict[str, Any]:
    """A dead letter as ``dlq show`` prints it: personal fields masked, card numbers removed (key included)."""
    from shared.events.storefront import redact_card_numbers
    from shared.logging import mask_value

    out = dict(full)
    try:
        out["value"] = json.dumps(mask_value(json.loads(full["value"])), ensure_ascii=False)
    except ValueError:
        out["value"] = mask_value(full["value"], "value")
    out["headers"] = {k: mask_value(v, k) for k, v in full["headers"].items()}
    if out.get("order_id"):
        out["order_id"] = redact_card_numbers(out["order_id"])
    return out


def audit(action: str, path: Any, **details: Any) -> dict[str, Any]:
    """Append who did what when to the operator audit log (one JSON line) and return the entry."""
    import getpass
    import os
    import socket
    from pathlib import Path

    entry = {
        "at": datetime.now(UTC).isoformat(),
        "action": action,
        "user": os.environ.get("FULFIL_OPERATOR") or getpass.getuser(),
        "host": socket.gethostname(),
        **details,
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
    return entry


ERASED = "[erased]"
# Where each service keeps personal data per order (database, collection); each has <collection>_versions too.
PERSONAL_STORES = (
    ("fulfil_order", "orders"),
    ("fulfil_payment", "payments"),
    ("fulfil_shipping", "shipments"),
    ("fulfil_notify", "contacts"),
)
FORGET_SETTLED_AFTER = timedelta(minutes=10)  # a terminal order's last mails and late facts have come by then


def _erase_order_value(value: str) -> str:
    data = json.loads(value)
    if isinstance(data.get("customer"), dict):
        # Erased values still fit the contract, so an erased event can be read (and re-published) like any other.
        data["customer"] = {
            **data["customer"],
            "id": "erased",
            "name": ERASED,
            "email": "erased@erased.invalid",
            "phone": None,
        }
    if isinstance(data.get("payment"), dict):
        data["payment"] = {**data["payment"], "token": ERASED}
    address = (data.get("shipping") or {}).get("address")
    if isinstance(address, dict):
        data["shipping"]["address"] = {
            **address,
            **dict.fromkeys(("recipient", "line1", "city", "postal_code"), ERASED),
            "line2": None,
        }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def erase_document(collection: str, doc: dict[str, Any]) -> dict[str, Any]:
    """The document with every personal field of its service replaced (pure; the same shape, still valid)."""
    doc = copy.deepcopy(doc)
    state = dict(doc.get("state") or {})
    if collection == "orders":
        doc["outbox"] = [
            {**r, "value": _erase_order_value(r["value"])} if r.get("event_type") == "OrderAccepted" else r
            for r in doc.get("outbox", [])
        ]
        state["history"] = [
            {**h, "detail": {**h.get("detail", {}), "customer_reason": ERASED}}
            if "customer_reason" in (h.get("detail") or {})
            else h
            for h in state.get("history", [])
        ]
    elif collection == "payments":
        if state.get("token"):
            state["token"] = ERASED
    elif collection == "shipments":
        if isinstance(state.get("address"), dict):
            state["address"] = {
                **state["address"],
                **dict.fromkeys(("recipient", "line1", "city", "postal_code"), ERASED),
                "line2": None,
            }
    elif collection == "contacts":
        state["email"] = ""
        state["name"] = ""
        state["deliveries"] = {k: {**d, "mail": None} for k, d in (state.get("deliveries") or {}).items()}
    doc["state"] = state
    return doc


ORDER_DATABASE = "fulfil_order"  # where the orders are, whose first version names their customer


def _customer_of(first_version: dict[str, Any]) -> str | None:
    """The customer id in the ``OrderAccepted`` of an order's first version (its placement), if any."""
    for record in first_version.get("outbox") or []:
        if record.get("event_type") != "OrderAccepted":
            continue
        try:
            customer = json.loads(record.get("value", "")).get("customer") or {}
        except (ValueError, AttributeError):
            return None
        return str(customer["id"]) if isinstance(customer, dict) and customer.get("id") else None
    return None


def orders_of_customers(db: Any, customer_ids: Iterable[str]) -> dict[str, list[str]]:
    """Per customer, the orders they placed. The customer is in the ``OrderAccepted`` of the placement's outbox:
    version 1 of each order's document, found in ``orders_versions`` -- not from the head copies, which trail their
    versions and may be missing altogether (a head write lost in a crash), so every order is found. One scan of the
    versions (``v: 1``) for any number of customers: a rare operator command."""
    wanted = {c: set[str]() for c in customer_ids}
    if not wanted:
        return {}
    projection = {"key": 1, "outbox.event_type": 1, "outbox.value": 1}
    for doc in db["orders_versions"].find({"v": 1}, projection):
        values = [r.get("value", "") for r in doc.get("outbox") or []]
        if not any(c in v for c in wanted for v in values):  # a cheap test before parsing the JSON
            continue
        customer = _customer_of(doc)
        if customer in wanted:
            wanted[customer].add(str(doc.get("key") or str(doc["_id"]).rsplit("@", 1)[0]))
    return {c: sorted(found) for c, found in wanted.items()}


def customer_order_ids(db: Any, customer_id: str) -> list[str]:
    """The orders a customer placed (see :func:`orders_of_customers`)."""
    return orders_of_customers(db, [customer_id])[customer_id]


def versions_of(coll: Any, key: str) -> list[dict[str, Any]]:
    """Every stored version of ``key`` (``<key>@<v>``, numbered from 1 up), each read by its ``_id``."""
    out: list[dict[str, Any]] = []
    while (doc := coll.find_one({"_id": f"{key}@{len(out) + 1:012d}"})) is not None:
        out.append(doc)
    return out


def newest_of(head: dict[str, Any] | None, versions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest state of a document: its last version, or its head copy when that is as new (a head only ever
    trails its versions; it may also be missing)."""
    candidates = [d for d in (head, versions[-1] if versions else None) if d is not None]
    return max(candidates, key=lambda d: int(d.get("v") or 0)) if candidates else None


@dataclass
class ForgetPlan:
    customer_id: str
    order_ids: list[str]
    skipped: dict[str, str]  # order -> why it is left for now
    documents: dict[str, list[dict[str, Any]]]  # "db.collection" -> documents to rewrite (erased)

    def summary(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "orders": self.order_ids,
            "skipped": self.skipped,
            "documents": {k: len(v) for k, v in self.documents.items()},
        }


def plan_forget(
    client: Any,
    customer_id: str,
    *,
    now: datetime | None = None,
    settled_after: timedelta = FORGET_SETTLED_AFTER,
    order_ids: list[str] | None = None,
) -> ForgetPlan:
    """Find every document holding the customer's personal data; orders still in flight are left for later.

    An order's state is its newest version, not its head copy (which may trail, or be missing after a crash).
    ``order_ids``: the customer's orders when already looked up (:func:`orders_of_customers`)."""
    at = now or datetime.now(UTC)
    order_db = client[ORDER_DATABASE]
    if order_ids is None:
        order_ids = customer_order_ids(order_db, customer_id)
    skipped: dict[str, str] = {}
    ready: list[str] = []
    order_versions: dict[str, list[dict[str, Any]]] = {}
    for oid in order_ids:
        versions = order_versions[oid] = versions_of(order_db["orders_versions"], oid)
        newest = newest_of(order_db["orders"].find_one({"_id": oid}), versions) or {}
        state = newest.get("state") or {}
        terminal_at = state.get("terminal_at")
        if state.get("status") not in ("COMPLETED", "CANCELLED", "REJECTED") or not terminal_at:
            skipped[oid] = "still in flight: erase it once it has finished"
            continue
        ended = datetime.fromisoformat(str(terminal_at).replace("Z", "+00:00"))
        if at - ended < settled_after:
            skipped[oid] = f"finished less than {settled_after} ago: its last mails may still be going out"
            continue
        ready.append(oid)
    documents: dict[str, list[dict[str, Any]]] = {}
    for db_name, coll_name in PERSONAL_STORES:
        heads, versions = client[db_name][coll_name], client[db_name][f"{coll_name}_versions"]
        changed: list[dict[str, Any]] = []
        changed_versions: list[dict[str, Any]] = []
        for oid in ready:
            head = heads.find_one({"_id": oid})
            for doc in [head] if head is not None else []:
                erased = erase_document(coll_name, doc)
                if erased != doc:
                    changed.append(erased)
            is_orders = (db_name, coll_name) == (ORDER_DATABASE, "orders")
            mine = order_versions[oid] if is_orders else versions_of(versions, oid)
            for doc in mine:
                erased = erase_document(coll_name, doc)
                if erased != doc:
                    changed_versions.append(erased)
        if changed:
            documents[f"{db_name}.{coll_name}"] = changed
        if changed_versions:
            documents[f"{db_name}.{coll_name}_versions"] = changed_versions
    return ForgetPlan(customer_id, ready, skipped, documents)


def apply_forget(client: Any, plan: ForgetPlan) -> int:
    """Write the erased documents back by ``_id`` (in batches of 50); returns how many were rewritten."""
    from pymongo import ReplaceOne

    written = 0
    for target, docs in plan.documents.items():
        db_name, coll_name = target.split(".", 1)
        for i in range(0, len(docs), 50):
            batch = docs[i : i + 50]
            client[db_name][coll_name].bulk_write([ReplaceOne({"_id": d["_id"]}, d) for d in batch], ordered=False)
            written += len(batch)
    return written


# ------------------------------------------------------------------ tombstones: revocations and erasures, durably

# A restore brings back what the backup held: keys revoked since are active again, customers erased since are back.
# So `keys revoke` and `forget` also record what they did here, in a database no backup holds and no restore drops
# (`fulfil restore` re-applies these after the documents are back); the audit log is a local file and may be gone.
TOMBSTONE_DATABASE = "fulfil_tombstones"
TOMBSTONES = "tombstones"
# A backup older than the topics' retention (7 days) cannot be restored (`fulfil restore` refuses it), and any
# backup that can be holds every older revocation and erasure already: tombstones are kept that long, with a margin.
TOMBSTONE_KEEP = timedelta(days=8)


def _operator() -> str:
    import getpass
    import os

    return os.environ.get("FULFIL_OPERATOR") or getpass.getuser()


def record_revocation(client: Any, *, key_id: str, storefront_id: str, at: datetime, keys_database: str) -> None:
    """A key was revoked (``_id`` = ``revoke:<key_id>``: one per key; never the key or its hash)."""
    doc = {
        "_id": f"revoke:{key_id}",
        "kind": "revoke",
        "key_id": key_id,
        "storefront_id": storefront_id,
        "keys_database": keys_database,
        "at": at,
        "by": _operator(),
    }
    _record(client, doc)


def _record(client: Any, doc: dict[str, Any]) -> None:
    coll = client[TOMBSTONE_DATABASE][TOMBSTONES]
    coll.replace_one({"_id": doc["_id"]}, doc, upsert=True)
    coll.delete_many({"at": {"$lt": doc["at"] - TOMBSTONE_KEEP}})  # the customer ids they hold go with them


def record_erasure(client: Any, *, customer_id: str, orders: list[str], at: datetime) -> None:
    """A customer was erased (``_id`` = ``forget:<customer>``; a later run replaces it, with its own time)."""
    doc: dict[str, Any] = {"_id": f"forget:{customer_id}", "kind": "forget", "customer_id": customer_id}
    doc |= {"orders": orders, "at": at, "by": _operator()}
    _record(client, doc)


def tombstones(client: Any) -> list[dict[str, Any]]:
    """Every recorded revocation and erasure, oldest first."""
    found = list(client[TOMBSTONE_DATABASE][TOMBSTONES].find({}))
    return sorted(found, key=lambda d: _aware(d.get("at")))


def _aware(at: Any) -> datetime:
    if not isinstance(at, datetime):
        return datetime(1970, 1, 1, tzinfo=UTC)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def revoke_again(client: Any, revocations: Iterable[dict[str, Any]], *, keys_database: str) -> list[str]:
    """Set ``revoked_at`` again on each revoked key a restore made active again (in the database the revocation
    names, else ``keys_database``); returns the key ids it changed."""
    from shared import keys

    changed: list[str] = []
    for tomb in revocations:
        key_id = str(tomb["key_id"])
        coll = client[str(tomb.get("keys_database") or keys_database)][keys.COLLECTION]
        doc = coll.find_one({"key_id": key_id})
        if doc is not None and not doc.get("revoked_at"):
            coll.update_one({"_id": doc["_id"]}, {"$set": {"revoked_at": tomb.get("at") or datetime.now(UTC)}})
            changed.append(key_id)
    return changed


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
