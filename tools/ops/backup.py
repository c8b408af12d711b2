"""``fulfil backup`` / ``fulfil restore``: the whole store in one archive, and the Kafka offsets it stands for.

A backup is one ``.tar.gz``: ``manifest.json`` (format, time, per collection its document count, indexes and the
SHA-256 of its member, and every consumer group's committed offsets) and one ``<database>/<collection>.bson`` per
collection, the documents as the store's own BSON bytes (``bson.RawBSONDocument``: every type kept exactly, as
``mongodump`` writes them).

Why the offsets are read *first*: the services commit an offset only once the work it covers is durable, so every
document read afterwards is at or after those offsets. Restoring the documents and rewinding the groups to them
makes each service re-consume what came since; the inboxes skip what the documents already hold, and replaying is
safe for the rest (idempotency keys, holds keyed by order, mails claimed per outcome).

The documents are read collection by collection while the services run, so the backup is no snapshot; each
database is read in the order that leaves it in a state a crash could have left: a service's own documents
(heads before their versions, which a head only ever trails), then what a step writes after them (the sandbox
provider's ledger and the carrier's bookings: a call sits between two writes of the payment or shipment), then
the timers, read both first and last and merged, because a timer is set before the state that needs it and
cleared after the state that ends it: a spurious timer is harmless, a missing one would leave an order open.

Indexes: the restore recreates every index the backup lists (those the services' ``ensure_indexes`` create at
startup -- ``orders.status_updated``, ``timers.due_at`` -- and any other), so the store is whole before a service
starts; the services' own ``ensure_indexes`` then finds them in place.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import bson
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata
from bson import json_util
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, uri_parser

from shared import topics
from shared.kafka import new_admin, new_consumer
from shared.settings import ServiceSettings
from tools.ops import privacy, topic_log
from tools.ops.paths import REPO
from tools.ops.settings import kafka_settings

FORMAT = "fulfil-backup/1"
MANIFEST = "manifest.json"
DATABASES = tuple(f"fulfil_{service}" for service in topics.CONSUMER_GROUPS)
TIMERS = "timers"
# Written by a step after the service's own document (see the module docstring): read after it.
WRITTEN_AFTER_STATE = ("gateway_ledger", "carrier_bookings")
RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True)
BATCH = 1000  # documents per insert_many on restore
# GroupOffsets: group -> topic -> partition -> committed offset (None: the group has none there)
GroupOffsets = dict[str, dict[str, dict[int, int | None]]]
# As in tools.ops.topic_log: settings, or an address with the environment's security.
Kafka = ServiceSettings | str | None


class BackupError(Exception):
    """The archive cannot be used, or the system is not in a state to restore into; the message says why."""


def default_path(at: datetime) -> Path:
    return REPO / ".local" / "backups" / f"fulfil-{at.strftime('%Y%m%dT%H%M%SZ')}.tar.gz"


def read_order(names: list[str]) -> list[str]:
    """Collections in the order a backup reads them: own documents, then what is written after them, timers last."""

    def rank(name: str) -> tuple[int, str]:
        return (2 if name == TIMERS else 1 if name in WRITTEN_AFTER_STATE else 0, name)

    return sorted(names, key=rank)


# ------------------------------------------------------------------ Kafka: committed offsets


async def committed_offsets(kafka: Kafka) -> tuple[GroupOffsets, dict[str, dict[int, int]]]:
    """Every consumer group's committed offsets on the topics it reads, and the end of each of those partitions."""

    names = sorted({t for ts in topics.CONSUMER_GROUPS.values() for t in ts})
    parts = await topic_log.partitions(kafka, names)
    admin = new_admin(kafka_settings(kafka), request_timeout_ms=10_000)
    await admin.start()
    try:
        groups: GroupOffsets = {}
        for group, group_topics in topics.CONSUMER_GROUPS.items():
            mine = [tp for tp in parts if tp.topic in group_topics]
            found = await admin.list_consumer_group_offsets(group, partitions=mine) if mine else {}
            groups[group] = {t: {} for t in group_topics}
            for tp in mine:
                meta = found.get(tp)
                groups[group][tp.topic][tp.partition] = meta.offset if meta is not None and meta.offset >= 0 else None
    finally:
        await admin.close()
    return groups, await _ends(kafka, parts)


async def _ends(kafka: Kafka, parts: list[TopicPartition]) -> dict[str, dict[int, int]]:
    consumer = new_consumer(kafka_settings(kafka), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(parts) if parts else {}
    finally:
        await consumer.stop()
    out: dict[str, dict[int, int]] = {}
    for tp, end in ends.items():
        out.setdefault(tp.topic, {})[tp.partition] = int(end)
    return out


@dataclass
class Move:
    """One partition of one group: where it is now, where the restore sets it, and what lies between."""

    group: str
    topic: str
    partition: int
    current: int | None
    target: int
    start: int  # the partition's first offset still in Kafka
    end: int

    @property
    def reread(self) -> int:
        return max(self.end - self.target, 0)


async def plan_offsets(kafka: Kafka, backed_up: GroupOffsets) -> tuple[list[Move], list[str]]:
    """The offset of every group's partition to set, and why a restore could not be brought forward (records
    since the backup already deleted by retention, or offsets beyond the end: not the cluster of the backup)."""

    names = sorted({t for ts in topics.CONSUMER_GROUPS.values() for t in ts})
    parts = await topic_log.partitions(kafka, names)
    consumer = new_consumer(kafka_settings(kafka), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        starts = await consumer.beginning_offsets(parts) if parts else {}
        ends = await consumer.end_offsets(parts) if parts else {}
    finally:
        await consumer.stop()
    now, _ = await committed_offsets(kafka)
    moves: list[Move] = []
    problems: list[str] = []
    for group, group_topics in topics.CONSUMER_GROUPS.items():
        for tp in (tp for tp in parts if tp.topic in group_topics):
            saved = backed_up.get(group, {}).get(tp.topic, {}).get(tp.partition)
            # No offset in the backup: the group had read nothing there, so the store holds nothing from it.
            target = int(starts[tp]) if saved is None else saved
            move = Move(
                group, tp.topic, tp.partition, now[group][tp.topic].get(tp.partition), target, starts[tp], ends[tp]
            )
            if target < move.start:
                problems.append(
                    f"{group} on {tp.topic}:{tp.partition}: records {target}..{move.start - 1} since the backup "
                    "are gone (retention): this backup cannot be brought up to date; restore a newer one"
                )
            elif target > move.end:
                problems.append(
                    f"{group} on {tp.topic}:{tp.partition}: the backup's offset {target} is beyond the end "
                    f"({move.end}): this Kafka is not the one the backup was taken with"
                )
            moves.append(move)
    return moves, problems


async def live_members(kafka: Kafka) -> dict[str, list[str]]:
    """Consumer groups of the services that have live members (a running service)."""

    found = {group: await topic_log.group_members(kafka, group) for group in topics.CONSUMER_GROUPS}
    return {g: m for g, m in found.items() if m}


async def set_offsets(kafka: Kafka, moves: list[Move]) -> None:
    """Commit each group's target offsets (the groups must have no members: checked just before)."""
    by_group: dict[str, dict[TopicPartition, OffsetAndMetadata]] = {}
    for m in moves:
        by_group.setdefault(m.group, {})[TopicPartition(m.topic, m.partition)] = OffsetAndMetadata(
            m.target, "fulfil restore"
        )
    for group, offsets in by_group.items():
        consumer = new_consumer(kafka_settings(kafka), group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(list(offsets))
            await consumer.commit(offsets)
        finally:
            await consumer.stop()


# ------------------------------------------------------------------ the archive


def _member(db: str, coll: str) -> str:
    return f"{db}/{coll}.bson"


def _sha256(stream: IO[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _index_specs(coll: Any) -> list[dict[str, Any]]:
    """The collection's indexes but ``_id_``, as canonical extended JSON (exact types, JSON in the manifest)."""
    specs = [dict(ix) for ix in coll.list_indexes() if ix.get("name") != "_id_"]
    out: list[dict[str, Any]] = json.loads(json_util.dumps(specs, json_options=json_util.CANONICAL_JSON_OPTIONS))
    return out


def _dump_database(client: Any, db_name: str, workdir: Path) -> dict[str, dict[str, Any]]:
    """Write each collection's documents to ``workdir/<db>/<coll>.bson``; return what the manifest says of them."""
    db = client.get_database(db_name, codec_options=RAW)
    names = read_order(db.list_collection_names())
    early_timers = {doc["_id"]: doc for doc in db[TIMERS].find()} if TIMERS in names else {}
    (workdir / db_name).mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        docs: Iterator[RawBSONDocument] = iter(db[name].find())
        if name == TIMERS:
            latest = {doc["_id"]: doc for doc in docs}
            docs = iter((early_timers | latest).values())
        path = workdir / _member(db_name, name)
        count = 0
        with path.open("xb") as f:
            path.chmod(0o600)
            for doc in docs:
                f.write(doc.raw)
                count += 1
        with path.open("rb") as f:
            sha, size = _sha256(f)
        out[name] = {
            "documents": count,
            "member": _member(db_name, name),
            "sha256": sha,
            "bytes": size,
            "indexes": _index_specs(db[name]),
        }
    return out


def hosts(mongodb_url: str) -> list[str]:
    """Where the store was, without credentials."""

    return [f"{h}:{p}" for h, p in uri_parser.parse_uri(mongodb_url)["nodelist"]]


def _keyed(by_topic: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Partition numbers as JSON object keys."""
    return {t: {str(p): v for p, v in ps.items()} for t, ps in by_topic.items()}


def take_backup(
    *, client: Any, mongodb_url: str, kafka: Kafka, out: Path, databases: tuple[str, ...] = DATABASES
) -> dict[str, Any]:
    """Offsets first, then every service database; one archive at ``out`` (written aside, then renamed)."""
    started = datetime.now(UTC)
    offsets, ends = asyncio.run(committed_offsets(kafka))
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".backup-") as tmp:
        work = Path(tmp)
        dumped = {name: _dump_database(client, name, work) for name in databases}
        manifest = {
            "format": FORMAT,
            "created_at": started.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "source": {"mongodb": hosts(mongodb_url), "kafka": kafka_settings(kafka).kafka_bootstrap_servers},
            "databases": dumped,
            "offsets": {
                g: {t: {str(p): o for p, o in ps.items()} for t, ps in ts.items()} for g, ts in offsets.items()
            },
            "ends_at_backup": _keyed(ends),
        }
        partial = work / "archive.tar.gz"
        with tarfile.open(partial, "w:gz", compresslevel=6) as tar:  # 9 is ~2x slower for ~3% less
            data = json.dumps(manifest, indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(data), int(started.timestamp()), 0o600
            tar.addfile(info, io.BytesIO(data))
            for colls in dumped.values():
                for entry in colls.values():
                    tar.add(work / entry["member"], arcname=entry["member"], recursive=False)
        partial.chmod(0o600)  # it holds personal data (docs/security.md)
        os.replace(partial, out)
    return manifest


@dataclass
class Archive:
    """An opened backup: its manifest, checked for shape."""

    path: Path
    manifest: dict[str, Any]
    databases: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> Archive:
        if not path.is_file():
            raise BackupError(f"{path}: no such file")
        try:
            with tarfile.open(path, "r:gz") as tar:
                member = tar.extractfile(MANIFEST)
                if member is None:
                    raise KeyError(MANIFEST)
                manifest = json.loads(member.read())
        except KeyError:
            raise BackupError(f"{path}: no {MANIFEST} in it: not a fulfil backup") from None
        except (tarfile.TarError, OSError, EOFError) as e:
            raise BackupError(f"{path}: not a readable .tar.gz ({e})") from None
        except ValueError as e:
            raise BackupError(f"{path}: {MANIFEST} is not valid JSON ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise BackupError(f"{path}: format {found!r}, this tool reads {FORMAT!r}")
        for key in ("created_at", "databases", "offsets"):
            if key not in manifest:
                raise BackupError(f"{path}: {MANIFEST} lacks {key!r}")
        return cls(path, manifest, manifest["databases"])

    @property
    def offsets(self) -> GroupOffsets:
        return {
            g: {t: {int(p): (None if o is None else int(o)) for p, o in ps.items()} for t, ps in ts.items()}
            for g, ts in self.manifest["offsets"].items()
        }

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.manifest["created_at"])

    def verify(self) -> int:
        """Check every member against its checksum and size; returns the bytes checked."""
        wanted = {e["member"]: e for colls in self.databases.values() for e in colls.values()}
        seen: set[str] = set()
        total = 0
        with tarfile.open(self.path, "r:gz") as tar:
            for info in tar:
                entry = wanted.get(info.name)
                stream = tar.extractfile(info) if entry is not None else None
                if entry is None or stream is None:
                    continue
                sha, size = _sha256(stream)
                if sha != entry["sha256"] or size != entry["bytes"]:
                    raise BackupError(f"{self.path}: {info.name} is damaged (checksum or size differs)")
                seen.add(info.name)
                total += size
        if missing := sorted(set(wanted) - seen):
            raise BackupError(f"{self.path}: member(s) missing: {', '.join(missing)}")
        return total

    def restore_into(self, client: Any) -> dict[str, int]:
        """Drop each backed-up database and write it back: collections, documents (exact BSON), indexes."""

        written: dict[str, int] = {}
        members = {e["member"]: (db, coll) for db, colls in self.databases.items() for coll, e in colls.items()}
        for db_name in self.databases:
            client.drop_database(db_name)
        with tarfile.open(self.path, "r:gz") as tar:
            for info in tar:
                if info.name not in members:
                    continue
                db_name, coll_name = members[info.name]
                db = client.get_database(db_name, codec_options=RAW)
                coll = db.create_collection(coll_name)
                stream = tar.extractfile(info)
                count = 0
                batch: list[RawBSONDocument] = []
                for doc in bson.decode_file_iter(stream, codec_options=RAW) if stream is not None else ():
                    batch.append(doc)
                    if len(batch) >= BATCH:
                        coll.insert_many(batch, ordered=False)
                        count, batch = count + len(batch), []
                if batch:
                    coll.insert_many(batch, ordered=False)
                    count += len(batch)
                written[f"{db_name}.{coll_name}"] = count
                for spec in json_util.loads(json.dumps(self.databases[db_name][coll_name]["indexes"])):
                    keys = [(k, int(v) if isinstance(v, int | float) else v) for k, v in spec.pop("key").items()]
                    for drop in ("v", "ns"):
                        spec.pop(drop, None)
                    coll.create_index(keys or [("_id", ASCENDING)], **spec)
        return written


def current_counts(client: Any, names: Iterable[str]) -> dict[str, dict[str, int]]:
    """Documents per collection in the service databases now (what a restore replaces), from ``collStats``: a
    count would scan every collection on FerretDB (30 s for 16,000 orders)."""
    out: dict[str, dict[str, int]] = {}
    for name in names:
        db = client[name]
        out[name] = {c: int(db.command("collStats", c).get("count", 0)) for c in sorted(db.list_collection_names())}
    return out


def _audited_since(audit_log: Path, since: datetime, action: str) -> list[dict[str, Any]]:
    """The audit log's ``action`` lines at or after ``since``, oldest first."""
    if not audit_log.is_file():
        return []
    found: list[dict[str, Any]] = []
    for line in audit_log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
            at = datetime.fromisoformat(str(entry["at"]))
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(entry, dict) and entry.get("action") == action and at >= since:
            found.append(entry)
    return found


def forgotten_since(audit_log: Path, since: datetime) -> list[str]:
    """Customers erased (``fulfil forget``) after ``since``, from the audit log: a restore brings their data back."""
    found: list[str] = []
    for entry in _audited_since(audit_log, since, "forget"):
        if entry.get("customer_id") not in found:
            found.append(str(entry.get("customer_id")))
    return found


@dataclass
class Tombstones:
    """What was revoked and erased, as a restore must re-apply it: from the durable tombstones in the store
    (``fulfil_tombstones.tombstones``, written by ``keys revoke`` and ``forget``; no restore drops them) and from
    the local audit log (a second source, e.g. a tombstone write that failed)."""

    revocations: list[dict[str, Any]]  # every revocation ever (re-applying one is harmless): key_id, keys_database
    erased_since: list[str]  # customers erased at or after the backup's time

    @classmethod
    def read(cls, client: Any, *, since: datetime, audit_log: Path) -> Tombstones:

        stored = privacy.tombstones(client)
        revocations = [t for t in stored if t.get("kind") == "revoke" and t.get("key_id")]
        known = {str(t["key_id"]) for t in revocations}
        for entry in _audited_since(audit_log, since, "keys revoke"):
            if entry.get("key_id") and str(entry["key_id"]) not in known:
                known.add(str(entry["key_id"]))
                revocations.append({"key_id": entry["key_id"], "keys_database": entry.get("database")})
        erased: list[str] = []
        for t in stored:
            if t.get("kind") == "forget" and privacy._aware(t.get("at")) >= since and t["customer_id"] not in erased:
                erased.append(str(t["customer_id"]))
        erased += [c for c in forgotten_since(audit_log, since) if c not in erased]
        return cls(revocations, erased)


@dataclass
class Reapplied:
    revoked: list[str]  # keys the restore had made active again, revoked again
    erased: dict[str, int]  # customer -> documents erased again
    left: dict[str, dict[str, str]]  # customer -> order -> why it was left (in flight in the restored state)


def reapply(client: Any, tombstones: Tombstones, *, keys_database: str) -> Reapplied:
    """After the documents are back: revoke again every revoked key, erase again every customer erased since the
    backup (one scan of the orders for all of them). Orders in flight in the restored state are left (and named):
    the replay finishes them, then ``fulfil forget`` erases them like any other."""
    revoked = privacy.revoke_again(client, tombstones.revocations, keys_database=keys_database)
    erased: dict[str, int] = {}
    left: dict[str, dict[str, str]] = {}
    if tombstones.erased_since:
        orders = privacy.orders_of_customers(client[privacy.ORDER_DATABASE], tombstones.erased_since)
        for customer in tombstones.erased_since:
            plan = privacy.plan_forget(client, customer, settled_after=timedelta(0), order_ids=orders[customer])
            erased[customer] = privacy.apply_forget(client, plan)
            if plan.skipped:
                left[customer] = plan.skipped
    return Reapplied(revoked, erased, left)


def offsets_summary(offsets: GroupOffsets, ends: dict[str, dict[int, int]] | None = None) -> dict[str, dict[str, int]]:
    """Per group: partitions, partitions without an offset, and (with the ends) records not yet consumed."""
    out: dict[str, dict[str, int]] = {}
    for group, by_topic in offsets.items():
        values = [(t, p, o) for t, ps in by_topic.items() for p, o in ps.items()]
        row = {"partitions": len(values), "without_offset": sum(1 for *_, o in values if o is None)}
        if ends is not None:
            row["lag"] = sum(max(ends.get(t, {}).get(p, 0) - (o or 0), 0) for t, p, o in values)
        out[group] = row
    return out
