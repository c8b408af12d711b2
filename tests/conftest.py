"""Fixtures that reach the real servers, shared by every test tier.

Where each server comes from, in order:
1. the environment (``KAFKA_BOOTSTRAP_SERVERS``, ``MONGODB_URL``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
   ``JAEGER_QUERY_URL``, ``SMTP_HOST``/``SMTP_PORT``/``SMTP_API_URL``);
2. the local stack of ``make infra-up`` when it answers on 127.0.0.1;
3. containers started with testcontainers when a Docker engine answers;
4. otherwise the test fails with a message saying to run ``make infra-up``. Nothing is skipped silently.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

HINT = "run `make infra-up` (or set {var}) so tests can reach a real server"
STACK_PY = Path(__file__).resolve().parent.parent / "deploy" / "local" / "stack.py"


def load_stack() -> ModuleType:
    """deploy/local/stack.py, a script rather than a package, as a module: its helpers, paths and servers."""
    spec = importlib.util.spec_from_file_location("fulfil_local_stack", STACK_PY)
    assert spec is not None
    assert spec.loader is not None
    if (loaded := sys.modules.get(spec.name)) is not None:
        return loaded
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Endpoints:
    kafka: str
    mongodb_url: str
    otlp_endpoint: str
    jaeger_query_url: str
    smtp_host: str
    smtp_port: int
    smtp_api_url: str


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]  # installed with testcontainers

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def endpoints() -> Iterator[Endpoints]:
    env = os.environ
    local = {
        "KAFKA_BOOTSTRAP_SERVERS": ("127.0.0.1:9092", ("127.0.0.1", 9092)),
        "MONGODB_URL": ("mongodb://127.0.0.1:27017", ("127.0.0.1", 27017)),
        "OTEL_EXPORTER_OTLP_ENDPOINT": ("http://127.0.0.1:4317", ("127.0.0.1", 4317)),
        "JAEGER_QUERY_URL": ("http://127.0.0.1:16686", ("127.0.0.1", 16686)),
        "SMTP_API_URL": ("http://127.0.0.1:8025", ("127.0.0.1", 8025)),
    }
    resolved: dict[str, str] = {}
    missing: list[str] = []
    for var, (default, (host, port)) in local.items():
        if env.get(var):
            resolved[var] = env[var]
        elif _answers(host, port):
            resolved[var] = default
        else:
            missing.append(var)

    containers: list[object] = []
    if missing and _docker_answers():
        resolved.update(_start_containers(missing, containers))
        missing = [m for m in missing if m not in resolved]
    if missing:
        pytest.fail(
            "no server for " + ", ".join(missing) + ": " + HINT.format(var=" / ".join(missing)),
            pytrace=False,
        )
    yield Endpoints(
        kafka=resolved["KAFKA_BOOTSTRAP_SERVERS"],
        mongodb_url=resolved["MONGODB_URL"],
        otlp_endpoint=resolved["OTEL_EXPORTER_OTLP_ENDPOINT"],
        jaeger_query_url=resolved["JAEGER_QUERY_URL"].rstrip("/"),
        smtp_host=env.get("SMTP_HOST", "127.0.0.1"),
        smtp_port=int(env.get("SMTP_PORT", "1025")),
        smtp_api_url=resolved["SMTP_API_URL"].rstrip("/"),
    )
    for c in containers:
        c.stop()  # type: ignore[attr-defined]


def _start_containers(missing: list[str], started: list[object]) -> dict[str, str]:
    """Start what is missing in Docker (used only where a Docker engine answers)."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.kafka import KafkaContainer
    from testcontainers.mongodb import MongoDbContainer

    out: dict[str, str] = {}
    if "KAFKA_BOOTSTRAP_SERVERS" in missing:
        kafka = KafkaContainer("apache/kafka:4.1.1").with_kraft()
        kafka.start()
        started.append(kafka)
        out["KAFKA_BOOTSTRAP_SERVERS"] = kafka.get_bootstrap_server()
    if "MONGODB_URL" in missing:
        mongo = MongoDbContainer("mongo:8")
        mongo.start()
        started.append(mongo)
        out["MONGODB_URL"] = mongo.get_connection_url()
    if {"OTEL_EXPORTER_OTLP_ENDPOINT", "JAEGER_QUERY_URL"} & set(missing):
        jaeger = DockerContainer("jaegertracing/jaeger:2.13.0").with_exposed_ports(4317, 16686)
        jaeger.start()
        started.append(jaeger)
        host = jaeger.get_container_host_ip()
        out["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{host}:{jaeger.get_exposed_port(4317)}"
        out["JAEGER_QUERY_URL"] = f"http://{host}:{jaeger.get_exposed_port(16686)}"
    if "SMTP_API_URL" in missing:
        mailpit = DockerContainer("axllent/mailpit:v1.27").with_exposed_ports(1025, 8025)
        mailpit.start()
        started.append(mailpit)
        host = mailpit.get_container_host_ip()
        out["SMTP_API_URL"] = f"http://{host}:{mailpit.get_exposed_port(8025)}"
        os.environ["SMTP_HOST"], os.environ["SMTP_PORT"] = host, str(mailpit.get_exposed_port(1025))
    return out
