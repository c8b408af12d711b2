"""What an order costs the stack, all in: CPU per component and records per topic, read before the run places its
first order and again once its last has ended, so a backlog worked off after a phase counts too (the CPU of a
phase's placing window alone undercounts a run that does not keep up).

Records are the growth of every saga topic's end offsets (what was produced; each is read again by every group
that takes it). Store documents are not counted here: a count on FerretDB's SQLite backend reads the whole
collection (over 30 s at 50,000 versions), so docs/performance.md counts them once per measurement by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import topics
from tools.drills import cpu


@dataclass(frozen=True)
class Meter:
    cpu: cpu.Snapshot
    records: dict[str, int]  # topic -> sum of its partitions' end offsets


async def read(consumer: AIOKafkaConsumer) -> Meter:
    """The meters now; the CPU snapshot is taken last so the reads themselves fall outside the window."""
    return Meter(records=await _end_offsets(consumer), cpu=cpu.snapshot())


def cost(before: Meter, after: Meter, *, orders: int, completed: int, cpus: int) -> dict[str, Any]:
    """Per order of the window: CPU ms per completed order by component, records per placed order,
    and the ceiling that CPU figure puts on this machine (cores x 1000 / ms)."""
    pct = cpu.usage(before.cpu, after.cpu)
    seconds = max(after.cpu.at - before.cpu.at, 1e-9)
    ms = {name: round(p * 10 * seconds / completed, 1) for name, p in pct.items()} if completed else {}
    total_ms = round(sum(ms.values()), 1)
    records = {t: after.records.get(t, 0) - n for t, n in before.records.items()}
    per = max(orders, 1)
    return {
        "window_s": round(seconds, 1),
        "orders": orders,
        "completed": completed,
        "cpu_ms_per_completed_order": ms,
        "cpu_ms_per_completed_order_total": total_ms,
        "orders_per_s_ceiling": round(cpus * 1000 / total_ms, 1) if total_ms else None,
        "records_per_order": {t: round(n / per, 2) for t, n in sorted(records.items()) if n},
        "records_per_order_total": round(sum(records.values()) / per, 2),
        "records_read_per_order_total": round(sum(n * _readers(t) for t, n in records.items()) / per, 2),
    }


def headline(c: dict[str, Any], cpus: int) -> str:
    """The first line of a bench's summary: what one completed order costs, and the rate that allows."""
    if not c.get("cpu_ms_per_completed_order_total"):
        return "CPU per completed order: not measured (no local stack's pid files, or no order completed)"
    parts = " · ".join(f"{name} {ms:g}" for name, ms in c["cpu_ms_per_completed_order"].items() if ms >= 0.5)
    return (
        f"CPU per completed order, all in: {c['cpu_ms_per_completed_order_total']:g} ms "
        f"-> at most {c['orders_per_s_ceiling']:g} orders/s on {cpus} cores ({parts}); "
        f"{c['records_per_order_total']:g} records written and {c['records_read_per_order_total']:g} read by the "
        "services per order"
    )


def _readers(topic: str) -> int:
    """How many of the services' consumer groups read a topic (the console reads them all besides)."""
    return sum(topic in subscribed for subscribed in topics.CONSUMER_GROUPS.values())


async def _end_offsets(consumer: AIOKafkaConsumer) -> dict[str, int]:
    cluster = await consumer._client.fetch_all_metadata()  # the tracker's consumer knows only what it reads
    parts = [TopicPartition(t, p) for t in topics.MAIN_TOPICS for p in sorted(cluster.partitions_for_topic(t) or ())]
    ends = await consumer.end_offsets(parts)
    out: dict[str, int] = {}
    for tp, offset in ends.items():
        out[tp.topic] = out.get(tp.topic, 0) + offset
    return out
