"""The whole system through Kafka's secured listener (SASL_SSL, SCRAM-SHA-512, 127.0.0.1:9094): the five services,
the operator CLI and the benchmark; a wrong password is refused at once, and a PLAINTEXT client gets nothing there.

The services of the local stack are stopped and started again with ``KAFKA_SECURITY=sasl_ssl`` (the stack's own
`services-down`/`services-up`, as test_crash.py restarts them); afterwards they are started again as they were.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError

from tests.conftest import STACK_PY, load_stack
from tests.e2e.conftest import ORDER_API, SERVICE_PORTS, System, fulfil, new_order_id, order_body

pytestmark = pytest.mark.e2e


stack = load_stack()


def _stack(*args: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, str(STACK_PY), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, f"stack.py {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def _process_env(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)


def _service_pid(name: str) -> int:
    pid = stack._read_pid(stack._service(name))
    assert pid is not None, f"{name} has no live pid file under {stack.RUN}"
    return int(pid)


def _broker_ports_connected(pid: int) -> set[int]:
    """The Kafka ports (9092, 9094) this process holds established connections to."""
    out = subprocess.run(["ss", "-Htnp", "state", "established"], capture_output=True, text=True, check=True).stdout
    ports = set()
    for line in out.splitlines():
        m = re.search(r"\S+:(\d+)\s+\S+:(909[24])\s", line + " ")
        if m and f"pid={pid}," in line:
            ports.add(int(m.group(2)))
    return ports


@pytest.fixture(scope="module")
def secured_env() -> dict[str, str]:
    """The environment of a client of the secured listener, as `make status` prints it."""
    if not stack.KAFKA_PASSWORD_FILE.exists() or not stack._port_open(stack.KAFKA_SECURE_PORT):
        pytest.fail(
            f"no SASL_SSL listener on 127.0.0.1:{stack.KAFKA_SECURE_PORT} (or no {stack.KAFKA_PASSWORD_FILE}): this "
            "Kafka predates it; restart it once (`stack.py stop kafka` then `make up`)",
            pytrace=False,
        )
    return {**os.environ, **stack.secure_client_env(), "KAFKA_SECURITY": "sasl_ssl"}


@pytest.fixture(scope="module")
def secured_services(system: System, secured_env: dict[str, str]) -> Iterator[None]:
    """The five services restarted on the secured listener; afterwards started again as they were."""
    before = _process_env(_service_pid("order"))
    restore = {**os.environ, "FULFIL_SKIP_SEED": "1", "REPLICAS": str(stack._copies_started())}
    restore.pop("KAFKA_SECURITY", None)
    if before.get("KAFKA_SECURITY"):
        restore["KAFKA_SECURITY"] = before["KAFKA_SECURITY"]
    try:
        _stack("services-down", env=restore)
        _stack("services-up", env={**secured_env, "FULFIL_SKIP_SEED": "1", "REPLICAS": "1"})
        yield
    finally:
        _stack("services-down", env=restore)
        _stack("services-up", env=restore)


@pytest.mark.usefixtures("secured_services")
async def test_an_order_completes_with_every_service_on_the_sasl_ssl_listener(
    system: System, secured_env: dict[str, str]
) -> None:
    for name in SERVICE_PORTS:
        pid = _service_pid(name)
        env = _process_env(pid)
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", name
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{stack.KAFKA_SECURE_PORT}", name
        assert _broker_ports_connected(pid) == {stack.KAFKA_SECURE_PORT}, f"{name} talks to Kafka elsewhere too"

    oid = new_order_id("SASL")
    r = await system.http.post(f"{ORDER_API}/orders", json=order_body(oid))
    assert r.status_code == 202, r.text
    order = await system.wait_for(oid, status="COMPLETED", timeout=60)
    assert order["status"] == "COMPLETED"

    done = await asyncio.to_thread(fulfil, "order", oid, "--json", env=secured_env)
    assert done.returncode == 0, done.stderr
    timeline = json.loads(done.stdout)
    assert timeline["status"] == "COMPLETED"
    seen = {e["event_type"] for e in timeline["events"]}
    assert {"OrderAccepted", "PaymentAuthorized", "OrderCompleted"} <= seen, seen


@pytest.mark.usefixtures("secured_services")
async def test_smoke_benchmark_runs_on_the_sasl_ssl_listener(secured_env: dict[str, str], tmp_path: Path) -> None:
    done = await asyncio.to_thread(
        fulfil, "bench", "--smoke", "--yes", "--json", "--out", str(tmp_path), env=secured_env, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    print("\n" + json.dumps({k: result[k] for k in ("summary", "ceiling")}, indent=2))
    assert result["summary"]["orders_placed"] > 0
    assert result["summary"]["orders_completed"] > 0, "orders complete through the secured listener"
    assert result["ceiling"]["records_consumed"] == 18 * result["ceiling"]["orders"] > 0


def test_a_wrong_password_is_refused_with_a_clear_error(secured_env: dict[str, str]) -> None:
    done = fulfil("order", "ANY-ORDER", env={**secured_env, "KAFKA_SASL_PASSWORD": "not-the-password"}, timeout=60)

    assert done.returncode == 1
    assert "SaslAuthenticationFailed" in done.stderr, done.stderr
    said = " ".join(done.stderr.split())  # the terminal may wrap the one-line reason
    assert f"cannot use Kafka at 127.0.0.1:{stack.KAFKA_SECURE_PORT} over SASL_SSL as fulfil" in said


def test_an_untrusted_certificate_is_refused(secured_env: dict[str, str]) -> None:
    # Without the local CA the broker's certificate cannot be verified: the client stops before sending a password.
    done = fulfil("order", "ANY-ORDER", env={**secured_env, "KAFKA_SSL_CAFILE": ""}, timeout=60)

    assert done.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr, done.stderr


async def test_a_plaintext_client_gets_nothing_from_the_secured_port() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=f"127.0.0.1:{stack.KAFKA_SECURE_PORT}", request_timeout_ms=5000)
    try:
        with pytest.raises(KafkaConnectionError):
            # The guard only keeps a regression from hanging the suite; the refusal itself comes at once.
            async with asyncio.timeout(60):
                await consumer.start()
    finally:
        await consumer.stop()
