"""docker-compose.yml and deploy/prometheus/prometheus.yml describe the system the code expects.

These tests only parse the files: they need neither Docker nor a server. The environment of each service is
checked against its settings class (``services.<name>.app.Settings``), so a setting added to the code but not
to the compose file fails here rather than silently falling back to a default meant for the local stack.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus" / "prometheus.yml"

SERVICE_PORTS = {"order": 8080, "payment": 8081, "inventory": 8082, "shipping": 8083, "notify": 8084}
SERVICES = list(SERVICE_PORTS)
INFRASTRUCTURE = ["kafka", "mongo", "jaeger", "mailpit", "prometheus"]
LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class Port:
    """One entry of a service's ``ports:``, short (``"127.0.0.1:8080:8080"``) or long syntax."""

    host_ip: str | None  # None: published on every interface of the host
    published: str | None  # None: an ephemeral host port
    target: str


def _load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return cast(dict[str, Any], data)


@pytest.fixture(scope="module")
def compose_services() -> dict[str, dict[str, Any]]:
    services = _load_yaml(COMPOSE_FILE).get("services")
    assert isinstance(services, dict), "docker-compose.yml has no services"
    return cast(dict[str, dict[str, Any]], services)


@pytest.fixture(scope="module")
def scrape_configs() -> list[dict[str, Any]]:
    configs = _load_yaml(PROMETHEUS_FILE).get("scrape_configs")
    assert isinstance(configs, list), "prometheus.yml has no scrape_configs"
    return cast(list[dict[str, Any]], configs)


@pytest.fixture(scope="module")
def prometheus_global() -> dict[str, Any]:
    return cast(dict[str, Any], _load_yaml(PROMETHEUS_FILE).get("global") or {})


def _ports(service: dict[str, Any]) -> list[Port]:
    ports: list[Port] = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            published = entry.get("published")
            ports.append(
                Port(
                    host_ip=entry.get("host_ip"),
                    published=None if published is None else str(published),
                    target=str(entry["target"]),
                )
            )
            continue
        parts = str(entry).split("/", 1)[0].rsplit(":", 2)
        if len(parts) == 3:
            ports.append(Port(host_ip=parts[0].strip("[]"), published=parts[1], target=parts[2]))
        elif len(parts) == 2:
            ports.append(Port(host_ip=None, published=parts[0], target=parts[1]))
        else:
            ports.append(Port(host_ip=None, published=None, target=parts[0]))
    return ports


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    """The environment as a mapping; a key without a value (Compose passes it from the shell) is None."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        out: dict[str, str | None] = {}
        for item in env:
            key, sep, value = str(item).partition("=")
            out[key] = value if sep else None
        return out
    return {str(key): None if value is None else str(value) for key, value in env.items()}


def _settings_class(name: str) -> type[ServiceSettings]:
    settings = importlib.import_module(f"services.{name}.app").Settings
    assert isinstance(settings, type), f"services.{name}.app.Settings is not a class"
    assert issubclass(settings, ServiceSettings), f"services.{name}.app.Settings is not a ServiceSettings"
    return settings


def _env_names(settings: type[ServiceSettings]) -> set[str]:
    prefix = str(settings.model_config.get("env_prefix") or "")
    return {f"{prefix}{field}".upper() for field in settings.model_fields}


def test_compose_declares_the_infrastructure_and_the_five_services(
    compose_services: dict[str, dict[str, Any]],
) -> None:
    missing = [name for name in [*INFRASTRUCTURE, "topics", *SERVICES] if name not in compose_services]
    assert not missing, f"docker-compose.yml lacks services {missing}"


@pytest.mark.parametrize(
    ("service", "image_prefix"),
    [
        ("kafka", "apache/kafka:4"),
        ("mongo", "mongo:8"),
        ("jaeger", "jaegertracing/jaeger:2"),
    ],
)
def test_infrastructure_runs_the_major_version_the_code_is_tested_against(
    compose_services: dict[str, dict[str, Any]], service: str, image_prefix: str
) -> None:
    image = str(compose_services[service].get("image", ""))
    assert image == image_prefix or image.startswith(f"{image_prefix}."), (
        f"{service} runs {image!r}, expected {image_prefix}"
    )


def test_every_published_port_is_bound_to_localhost_only(
    compose_services: dict[str, dict[str, Any]],
) -> None:
    exposed = [
        f"{name}: {port}"
        for name, service in compose_services.items()
        for port in _ports(service)
        if port.host_ip != LOCALHOST
    ]
    assert not exposed, f"ports published beyond {LOCALHOST}: {exposed}"


@pytest.mark.parametrize(
    ("service", "port"),
    [
        ("kafka", 9092),
        ("mongo", 27017),
        ("jaeger", 16686),
        ("jaeger", 4317),
        ("mailpit", 1025),
        ("mailpit", 8025),
        ("prometheus", 9090),
    ],
)
def test_infrastructure_publishes_its_port_on_localhost(
    compose_services: dict[str, dict[str, Any]], service: str, port: int
) -> None:
    assert Port(LOCALHOST, str(port), str(port)) in _ports(compose_services[service]), (
        f"{service} does not publish {LOCALHOST}:{port}"
    )


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_builds_from_the_project_and_publishes_its_port(
    compose_services: dict[str, dict[str, Any]], name: str
) -> None:
    service = compose_services[name]
    build = service.get("build")
    context = build.get("context") if isinstance(build, dict) else build
    assert context in {".", "./"}, f"{name} builds from {context!r}, expected the project image (.)"
    port = SERVICE_PORTS[name]
    assert Port(LOCALHOST, str(port), str(port)) in _ports(service), f"{name} does not publish {LOCALHOST}:{port}"


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_runs_its_own_module(compose_services: dict[str, dict[str, Any]], name: str) -> None:
    assert compose_services[name].get("command") == ["python", "-m", f"services.{name}"]


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_starts_after_kafka_mongo_and_the_topics_exist(
    compose_services: dict[str, dict[str, Any]], name: str
) -> None:
    depends_on = compose_services[name].get("depends_on")
    assert isinstance(depends_on, dict), f"{name} must wait for its dependencies with conditions"
    conditions = {dep: (cond or {}).get("condition") for dep, cond in depends_on.items()}
    assert conditions.get("kafka") == "service_healthy"
    assert conditions.get("mongo") == "service_healthy"
    assert conditions.get("topics") == "service_completed_successfully"


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_environment_names_every_setting_it_reads(
    compose_services: dict[str, dict[str, Any]], name: str
) -> None:
    expected = _env_names(_settings_class(name))
    missing = sorted(expected - _environment(compose_services[name]).keys())
    assert not missing, f"docker-compose.yml does not set {missing} for {name}"


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_environment_is_accepted_by_its_settings(
    compose_services: dict[str, dict[str, Any]], name: str
) -> None:
    settings_class = _settings_class(name)
    fields = _env_names(settings_class)
    values = {
        key.lower(): value
        for key, value in _environment(compose_services[name]).items()
        if value is not None and key in fields
    }
    settings = settings_class.model_validate(values)  # raises on a value the service would refuse
    assert settings.service_name == name
    assert settings.http_host == "0.0.0.0"
    assert settings.http_port == SERVICE_PORTS[name]


def test_kafka_advertises_a_listener_for_containers_and_one_for_the_host(
    compose_services: dict[str, dict[str, Any]],
) -> None:
    env = _environment(compose_services["kafka"])
    advertised = {listener.split("://", 1)[1] for listener in (env.get("KAFKA_ADVERTISED_LISTENERS") or "").split(",")}
    assert env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") == "false"
    assert f"{LOCALHOST}:9092" in advertised or "localhost:9092" in advertised
    for name in SERVICES:
        bootstrap = _environment(compose_services[name]).get("KAFKA_BOOTSTRAP_SERVERS")
        assert bootstrap in advertised, f"{name} bootstraps from {bootstrap!r}, not one of {advertised}"


@pytest.mark.parametrize("name", SERVICES)
def test_prometheus_scrapes_metrics_of_every_service_every_5s(
    scrape_configs: list[dict[str, Any]], prometheus_global: dict[str, Any], name: str
) -> None:
    target = f"{name}:{SERVICE_PORTS[name]}"
    jobs = [
        job
        for job in scrape_configs
        if any(target in static.get("targets", []) for static in job.get("static_configs", []))
    ]
    assert jobs, f"prometheus.yml does not scrape {target}"
    for job in jobs:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        assert job.get("scrape_interval", prometheus_global.get("scrape_interval")) == "5s"


def test_prometheus_runs_with_the_repository_scrape_config(
    compose_services: dict[str, dict[str, Any]],
) -> None:
    volumes = [str(v) for v in compose_services["prometheus"].get("volumes", [])]
    assert any(v.startswith("./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml") for v in volumes)
