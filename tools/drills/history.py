"""Does history cost anything? ``fulfil history``: start-up time and idle CPU before and after N more orders.

Issue #8 asks that start-up time and idle CPU stay the same after 100,000 orders have been placed: nothing a service
does at start or while idle may read a collection that grows with history. Placing 100,000 orders through the saga
takes over an hour on the reference machine, so this grows the history the way the saga leaves it instead: it
copies the documents of finished orders (every service's versions, heads, ledger lines and bookings, found by the
order id at the front of their ``_id``) under new order ids ``HIST-<run>-<n>`` until N more orders exist. The
store then holds what N finished orders leave behind, with the same sizes and shapes; nothing is in flight, as
after a quiet night.

Measured before and after, on the running local stack (``make up``):

* **start-up**: each service process is stopped and started again (``deploy/local/stack.py stop|start``), and the
  time until it answers ``/ready`` is taken;
* **idle CPU**: the CPU time the services, the store and the broker use over ``--idle`` seconds with no traffic
  (``/proc/<pid>/stat``), as % of one core.

The table shows both and the ratio after/before; the JSON goes to ``.local/bench/history-<run>.json``. Like the
bench, it changes a live system (it adds orders to every store: the order API, the console and the KPIs see them),
so it asks first. Figures are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import typer
from pymongo import AsyncMongoClient
from pymongo.errors import BulkWriteError
from rich.table import Table

from tools.drills import cpu
from tools.ops.settings import tool_settings

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "deploy" / "local" / "stack.py"
SERVICES = ("order", "payment", "inventory", "shipping", "notify")  # on ports 8080... in this order
FIRST_PORT = 8080
INFRA = ("ferretdb", "kafka")
# The collections that keep one document (or a few) per order; stock, timers and keys do not grow with orders.
PER_ORDER = {
    "order": ("orders", "orders_versions"),
    "payment": ("payments_versions", "gateway_ledger"),
    "inventory": ("reservations_versions",),
    "shipping": ("shipments_versions", "carrier_bookings"),
    "notify": ("contacts_versions",),
}
FINISHED = ("COMPLETED", "CANCELLED", "REJECTED")
TEMPLATES = 200  # finished orders copied round-robin
SCAN_LIMIT = 10_000  # documents read per collection to find the templates' documents
BATCH = 1000  # documents per insert_many
WRITERS = 4  # insert_many commands in flight


@dataclass
class Measurement:
    startup_s: dict[str, float] = field(default_factory=dict)
    store_ms: dict[str, float] = field(default_factory=dict)  # of the start-up: preparing the store
    idle_cpu_pct: dict[str, float] = field(default_factory=dict)


def _order_of(doc_id: str) -> str:
    """The order a per-order document belongs to: ``<order>``, ``<order>@<version>`` or ``<order>:<op>``."""
    return doc_id.split("@", 1)[0].split(":", 1)[0]


def _renamed(value: Any, old: str, new: str) -> Any:
    """``value`` with the order id ``old`` replaced by ``new`` wherever a string holds it."""
    if isinstance(value, str):
        return value.replace(old, new) if old in value else value
    if isinstance(value, dict):
        return {k: _renamed(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, old, new) for v in value]
    return value


def idle_cpu(seconds: float) -> dict[str, float]:
    """% of one core each service, the store and the broker use over ``seconds`` of no traffic."""
    before = cpu.snapshot()
    time.sleep(seconds)
    used = cpu.usage(before, cpu.snapshot())
    return {name: used.get(name, 0.0) for name in (*SERVICES, *INFRA)}


def restart_times(repeats: int = 3) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds from starting each service process until it answers ``/ready``, and the milliseconds of that its
    store preparation took (the ``store_ms`` of its "service started" line) -- the medians of ``repeats`` restarts,
    one service at a time (joining the consumer group makes single restarts vary by a second or more).

    ``/ready`` is polled here every 50 ms (the stack script looks only every 0.5 s)."""
    took: dict[str, list[float]] = defaultdict(list)
    store: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeats):
        for port, name in enumerate(SERVICES, start=FIRST_PORT):
            subprocess.run([sys.executable, str(STACK), "stop", name], check=True, capture_output=True, cwd=REPO)
            t0 = time.monotonic()
            starting = subprocess.Popen(
                [sys.executable, str(STACK), "start", name], cwd=REPO, stdout=subprocess.DEVNULL
            )
            while not _ready(port):
                if starting.poll() not in (None, 0):
                    raise typer.BadParameter(f"{name} did not start: see .local/logs/{name}.log")
                time.sleep(0.05)
            took[name].append(time.monotonic() - t0)
            starting.wait()
            if (ms := _store_ms(name)) is not None:
                store[name].append(ms)
    return (
        {name: round(statistics.median(times), 2) for name, times in took.items()},
        {name: round(statistics.median(times), 1) for name, times in store.items()},
    )


def _store_ms(service: str) -> float | None:
    """The store preparation time the service's newest "service started" log line gives."""
    log = cpu.run_dir().parent / "logs" / f"{service}.log"
    with contextlib.suppress(OSError):
        for line in reversed(log.read_text(errors="replace").splitlines()[-200:]):
            if '"service started"' in line:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    return float(json.loads(line)["store_ms"])
                return None
    return None


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _templates(client: AsyncMongoClient[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Documents of up to ``TEMPLATES`` finished orders, by collection (``service.collection``) and order."""
    heads = client["fulfil_order"]["orders"].find({"state.status": {"$in": list(FINISHED)}}, {"_id": 1})
    chosen = {doc["_id"] async for doc in heads.limit(TEMPLATES)}
    if not chosen:
        raise typer.BadParameter("no finished orders to copy: place some first (make bench SMOKE=1)")
    found: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for service, collections in PER_ORDER.items():
        for name in collections:
            # The templates are the oldest finished orders, so their documents are near the start of each
            # collection: the read stops after SCAN_LIMIT documents, however much history there is.
            async for doc in client[f"fulfil_{service}"][name].find({}).limit(SCAN_LIMIT).batch_size(1000):
                order = _order_of(str(doc["_id"]))
                if order in chosen:
                    found[order][f"{service}.{name}"].append(doc)
    return found


async def grow(orders: int, run: str, progress: Any) -> int:
    """Add ``orders`` finished orders to every store, copied from finished orders already there; returns how many
    documents that wrote."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(tool_settings().mongodb_url)
    try:
        templates = list((await _templates(client)).items())
        pending: dict[str, list[dict[str, Any]]] = defaultdict(list)

        async def write(where: str, docs: list[dict[str, Any]]) -> None:
            service, name = where.split(".", 1)
            try:
                await client[f"fulfil_{service}"][name].insert_many(docs, ordered=False)
            except BulkWriteError as e:  # a rerun with the same run id: the copies are there already
                if any(err.get("code") != 11000 for err in e.details.get("writeErrors", [])):
                    raise

        writes: set[asyncio.Task[None]] = set()
        copied = 0
        for n in range(orders):
            old, by_collection = templates[n % len(templates)]
            new = f"HIST-{run}-{n:07d}"
            for where, docs in by_collection.items():
                copied += len(docs)
                pending[where].extend(_renamed(doc, old, new) for doc in docs)
                if len(pending[where]) >= BATCH:
                    # the stores write side by side (a file each), so keep a few writes in flight
                    writes.add(asyncio.create_task(write(where, pending.pop(where))))
            if len(writes) >= WRITERS:
                done, writes = await asyncio.wait(writes, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            if n % 1000 == 999:
                progress(n + 1)
        writes.update(asyncio.create_task(write(where, docs)) for where, docs in pending.items() if docs)
        for pending_write in asyncio.as_completed(writes):
            await pending_write
        progress(orders)
        return copied
    finally:
        await client.close()


async def measure(idle_seconds: float) -> Measurement:
    # No document counts: FerretDB answers even estimated_document_count by reading every document (86 s for
    # 300,000), which is also why nothing in the services counts a collection that grows.
    m = Measurement()
    m.startup_s, m.store_ms = await asyncio.to_thread(restart_times)
    await asyncio.sleep(5)  # let the restarted services settle (consumer group joins) before idling is measured
    m.idle_cpu_pct = await asyncio.to_thread(idle_cpu, idle_seconds)
    return m


def table(before: Measurement, after: Measurement, added: int) -> Table:
    t = Table(title=f"history: before and after {added:,} more finished orders")
    for col in ("", "before", "after", "after / before"):
        t.add_column(col, justify="right" if col else "left")

    def ratio(a: float, b: float) -> str:
        return f"x{b / a:.2f}" if a > 0 else "-"

    for name in SERVICES:
        a, b = before.startup_s.get(name, 0.0), after.startup_s.get(name, 0.0)
        t.add_row(f"start-up {name}, s", f"{a:.2f}", f"{b:.2f}", ratio(a, b))
    for name in SERVICES:
        a, b = before.store_ms.get(name, 0.0), after.store_ms.get(name, 0.0)
        t.add_row(f"  of it the store, {name}, ms", f"{a:.1f}", f"{b:.1f}", ratio(a, b))
    for name in (*SERVICES, *INFRA):
        a, b = before.idle_cpu_pct.get(name, 0.0), after.idle_cpu_pct.get(name, 0.0)
        t.add_row(f"idle CPU {name}, % of a core", f"{a:.2f}", f"{b:.2f}", ratio(a, b))
    a, b = sum(before.idle_cpu_pct.values()), sum(after.idle_cpu_pct.values())
    t.add_row("idle CPU all, % of a core", f"{a:.2f}", f"{b:.2f}", ratio(a, b))
    return t
