"""Where the CPU goes: CPU time of the local stack's processes, read from ``/proc`` by their pid files.

On one machine the cores are the wall, so the bench reports, per phase, how much of a core each part of the stack
used (the five services, FerretDB, Kafka, Jaeger, the bench itself) and what that is per order; ``fulfil history``
uses the same figures for idle CPU. Only a stack started by ``make up`` on this machine has pid files; against a
remote stack the figures are simply empty. (With the PostgreSQL backend its worker processes are not counted: only
the postmaster has a pid file.)
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("order", "payment", "inventory", "shipping", "notify")
BENCH = "bench"  # this process
_REPLICA = re.compile(r"^(?P<service>[a-z]+)-\d+$")


def run_dir() -> Path:
    """Where ``make up`` writes its pid files (``FULFIL_STATE_DIR``, default ``.local``)."""
    return Path(os.environ.get("FULFIL_STATE_DIR", REPO / ".local")) / "run"


def component(name: str) -> str:
    """The part of the stack a pid file belongs to: replicas (``order-2``) count with their service."""
    m = _REPLICA.match(name)
    return m["service"] if m and m["service"] in SERVICES else name


def copies() -> dict[str, int]:
    """How many copies of each service the local stack runs (from its pid files; empty against a remote stack)."""
    counts: dict[str, int] = {}
    for path in sorted(run_dir().glob("*.pid")):
        if (name := component(path.stem)) in SERVICES:
            counts[name] = counts.get(name, 0) + 1
    return counts


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic()
    seconds: dict[tuple[str, int], float]  # (pid-file name, pid) -> CPU seconds used so far


def snapshot() -> Snapshot:
    """CPU time so far of every process with a pid file, and of this one."""
    used: dict[tuple[str, int], float] = {(BENCH, os.getpid()): time.process_time()}
    pidfiles = sorted(run_dir().glob("*.pid"))
    if pidfiles:  # a local stack: its pid helper (deploy/ is not in the image, where there are no pid files)
        from deploy.local.stack import running_pid

        for path in pidfiles:
            if (pid := running_pid(path)) is not None and (s := cpu_seconds(pid)) is not None:
                used[(path.stem, pid)] = s
    return Snapshot(time.monotonic(), used)


def usage(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """% of one core each component used between two snapshots (a process restarted in between is left out)."""
    wall = max(after.at - before.at, 1e-9)
    by: dict[str, float] = {}
    for key, spent in after.seconds.items():
        if key in before.seconds:
            name = component(key[0])
            by[name] = by.get(name, 0.0) + 100 * (spent - before.seconds[key]) / wall
    return {name: round(pct, 1) for name, pct in sorted(by.items(), key=lambda kv: -kv[1])}


def per_order_ms(pct: dict[str, float], orders_per_s: float) -> dict[str, float]:
    """CPU milliseconds per order of each component, at ``orders_per_s``."""
    if orders_per_s <= 0:
        return {}
    return {name: round(10 * p / orders_per_s, 1) for name, p in pct.items()}  # p % of a core = p*10 ms per s
