"""The Monkey: carries out the disruptions (SIGKILLs of service processes, stops of a broker, the store, the SMTP
server) through ``deploy/local/stack.py``, and starts again whatever it stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from deploy.local.stack import broker_name, kafka_brokers, kafka_quorum_leader
from shared import topics
from shared.kafka import new_admin
from tools.drills.chaos.plan import Disruption, Plan, Result
from tools.drills.cpu import run_dir
from tools.ops.settings import tool_settings

REPO = Path(__file__).resolve().parents[3]
STACK = REPO / "deploy" / "local" / "stack.py"
INFRA = ("kafka", "kafka-2", "kafka-3", "ferretdb", "jaeger", "smtp-sink", "provider-sim")


def service_processes() -> list[str]:
    """Every service process the local stack runs (replicas included), by pid-file name."""
    return sorted(p.stem for p in run_dir().glob("*.pid") if p.stem not in INFRA)


def stack_sync(verb: str, name: str, timeout: float = 150) -> bool:
    """``deploy/local/stack.py start|stop NAME``, blocking; True when it succeeded."""
    try:
        done = subprocess.run(
            [sys.executable, str(STACK), verb, name],
            capture_output=True,
            timeout=timeout,
            check=False,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


async def stack(verb: str, name: str) -> bool:
    return await asyncio.to_thread(stack_sync, verb, name)


def cluster_size() -> int:
    """How many brokers the local stack's Kafka runs (1: no cluster)."""
    return kafka_brokers()


async def in_sync(bootstrap: str | None, *, within: float) -> bool:
    """Whether, within ``within`` seconds, every partition of the saga's topics has all its replicas in sync."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        admin = new_admin(tool_settings(bootstrap), request_timeout_ms=5000)
        try:
            await admin.start()
            described = await admin.describe_topics(list(topics.ALL_TOPICS))
            if all(
                len(p["isr"]) == len(p["replicas"])
                for t in described
                if t.get("error_code", 0) == 0
                for p in t["partitions"]
            ):
                return True
        except Exception:  # noqa: S110  (a broker is still starting: ask again)
            pass
        finally:
            await admin.close()
        await asyncio.sleep(2)
    return False


class Monkey:
    """Carries out the disruptions; remembers what it stopped so that :meth:`heal` can start it again."""

    def __init__(self, plan: Plan, result: Result, say: Callable[[str], None]) -> None:
        self.rng = random.Random(plan.seed ^ 0x5EED)  # its own stream: the targets do not shift the orders
        self.result, self.say = result, say
        self.touched: list[str] = []
        self.brokers_stopped: list[str] = []
        self.plan = plan
        self.t0 = time.monotonic()

    def _touch(self, name: str) -> None:
        if name not in self.touched:
            self.touched.append(name)

    async def _restart(self, name: str, down_for: float) -> None:
        await asyncio.sleep(down_for)
        for _attempt in range(3):
            if await stack("start", name):
                self.result.restarts.append(name)
                self.result.last_recovery_s = time.monotonic() - self.t0
                return
            await asyncio.sleep(2)
        self.result.failures.append(f"{name} did not come back (left for the final heal)")

    async def do(self, d: Disruption) -> None:
        if d.action == "kill":
            candidates = service_processes()
            if not candidates:
                self.result.failures.append("no service process to kill")
                return
            # The stack's own pid helpers, imported late: deploy/ is not in the image, and every `fulfil` imports this.
            from deploy.local.stack import pid_alive, running_pid

            name = self.rng.choice(candidates)
            pid = running_pid(run_dir() / f"{name}.pid")
            self._touch(name)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self.result.kills.append(name)
                self.say(f"SIGKILL {name} (pid {pid})")
                for _ in range(50):
                    if not pid_alive(pid):
                        break
                    await asyncio.sleep(0.1)
            else:
                self.result.failures.append(f"{name} was not running when its kill came")
            await self._restart(name, d.down_for)
            return
        if d.action == "brokers":
            await self.stop_a_broker(d.down_for)
            return
        name = {"broker": "kafka", "store": "ferretdb", "smtp": "smtp-sink"}[d.action]
        self._touch(name)
        self.say(f"stopping {name} for {d.down_for:.0f}s")
        if not await stack("stop", name):
            self.result.failures.append(f"could not stop {name}")
        await self._restart(name, d.down_for)

    async def stop_a_broker(self, down_for: float) -> None:
        """Stop one broker of the cluster (the active controller while it has not been stopped, then the others in
        turn), start it again, and wait until every partition is back on all its replicas before the next stop: a
        rolling restart, as an operator does one, under load."""
        leader = await asyncio.to_thread(kafka_quorum_leader)
        names = [broker_name(k) for k in range(1, self.plan.brokers + 1)]
        left = [n for n in names if n not in self.brokers_stopped] or names
        name = broker_name(leader) if leader is not None and broker_name(leader) in left else left[0]
        self.brokers_stopped.append(name)
        self._touch(name)
        role = " (the active controller)" if leader is not None and name == broker_name(leader) else ""
        self.say(f"stopping {name}{role} for {down_for:.0f}s")
        if not await stack("stop", name):
            self.result.failures.append(f"could not stop {name}")
        await self._restart(name, down_for)
        if not await in_sync(self.plan.bootstrap, within=90):
            self.result.failures.append(f"partitions still under-replicated 90s after {name} came back")

    def heal(self) -> None:
        """Start everything the drill touched (infrastructure first); safe to call more than once."""
        order = [n for n in INFRA if n in self.touched] + [n for n in self.touched if n not in INFRA]
        for name in order:
            if not stack_sync("start", name):
                self.result.failures.append(f"could not start {name} again: start it by hand")
