"""docker-compose.yml and deploy/prometheus/prometheus.yml describe the system the code expects.

These tests only parse the files: they need neither Docker nor a server. The environment of each service is
checked against its settings class (``services.<name>.app.Settings``), so a setting added to the code but not
to the compose file fails here rather than silently falling back to a default meant for the local stack.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Mapping
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


def _interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``${NAME:-default}`` as ``docker compose`` resolves it with ``env`` (an --env-file)."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1)) or m.group(2), text)


def _load_yaml(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    data = yaml.safe_load(_interpolate(path.read_text(encoding="utf-8"), env or {}))
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return cast(dict[str, Any], data)


def _compose_services(env: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    services = _load_yaml(COMPOSE_FILE, env).get("services")
    assert isinstance(services, dict), "docker-compose.yml has no services"
    return cast(dict[str, dict[str, Any]], services)


@pytest.fixture(scope="module")
def compose_services() -> dict[str, dict[str, Any]]:
    return _compose_services()


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


# ------------------------------------------------------------------ Grafana: the KPI dashboard over Prometheus

GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
# Grafana's own variables in queries, replaced by a duration so the query parses as plain PromQL.
GRAFANA_DURATIONS = ("$__rate_interval", "$__interval", "$__range")


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Host path -> container path of each bind mount (``./a:/b:ro``)."""
    out = {}
    for volume in service.get("volumes", []):
        host, container = str(volume).split(":")[:2]
        out[host.rstrip("/")] = container.rstrip("/")
    return out


def _kpi_metric_names() -> set[str]:
    """The sample names ``KpiBook.collector()`` exports, from the families it declares."""
    from tools.ops.kpi.book import KpiBook

    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {family.name + s for family in KpiBook().metrics() for s in suffixes[family.type]}


def _queried_metrics(expr: str) -> set[str]:
    import promql_parser

    for variable in GRAFANA_DURATIONS:
        expr = expr.replace(variable, "1h")
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)  # raises on a query Prometheus would refuse
    return names


def test_grafana_runs_with_the_repository_provisioning_on_localhost(
    compose_services: dict[str, dict[str, Any]],
) -> None:
    grafana = compose_services.get("grafana")
    assert grafana is not None, "docker-compose.yml has no grafana service"
    assert str(grafana.get("image", "")).startswith("grafana/grafana:"), grafana.get("image")
    assert Port(LOCALHOST, "3000", "3000") in _ports(grafana)
    mounts = _mounts(grafana)
    assert mounts.get("./deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    assert "prometheus" in (grafana.get("depends_on") or {})
    providers = _load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "fulfil.yml")["providers"]
    paths = {p["options"]["path"].rstrip("/") for p in providers}
    assert paths == {mounts.get("./deploy/grafana/dashboards")}, "the dashboard provider reads where compose mounts"


def test_grafana_datasource_is_the_compose_prometheus() -> None:
    datasources = _load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert [(d["type"], d["url"], d["uid"]) for d in datasources] == [
        ("prometheus", "http://prometheus:9090", "prometheus")
    ]


def test_prometheus_scrapes_the_console_kpis_every_5s(
    scrape_configs: list[dict[str, Any]], prometheus_global: dict[str, Any]
) -> None:
    jobs = [
        job for job in scrape_configs for static in job.get("static_configs", []) if "console:8090" in static["targets"]
    ]
    assert jobs, "prometheus.yml does not scrape the ops console (console:8090), where the fulfil_kpi_* metrics are"
    for job in jobs:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        assert job.get("scrape_interval", prometheus_global.get("scrape_interval")) == "5s"


def test_prometheus_reads_the_console_metrics_with_the_token_the_console_takes(
    scrape_configs: list[dict[str, Any]], compose_services: dict[str, dict[str, Any]]
) -> None:
    env = {"CONSOLE_METRICS_TOKEN": "chosen-in-the-shell-0123"}
    [job] = [j for j in scrape_configs for s in j.get("static_configs", []) if "console:8090" in s["targets"]]
    auth = job.get("authorization") or {}
    assert auth.get("type") == "Bearer", "GMV and revenue are behind a key: the console's scrape needs one"
    mounted = {c["target"]: c["source"] for c in compose_services["prometheus"].get("configs", [])}
    source = mounted.get(auth.get("credentials_file"))
    assert source, "compose does not mount the file prometheus.yml reads the console's token from"
    configs = _load_yaml(COMPOSE_FILE, env)["configs"]
    console_env = _environment(_compose_services(env)["console"])
    assert configs[source]["content"] == console_env["METRICS_TOKEN"] == env["CONSOLE_METRICS_TOKEN"]


def test_there_is_a_kpi_dashboard() -> None:
    assert [p.name for p in DASHBOARDS] == ["fulfil-kpis.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_and_queries_only_metrics_the_kpi_collector_exports(path: Path) -> None:
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    panels = dashboard["panels"]
    assert dashboard["uid"]
    assert dashboard["title"]
    assert panels
    assert len({p["id"] for p in panels}) == len(panels), "panel ids repeat"
    exported = _kpi_metric_names()
    used: set[str] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = _queried_metrics(target["expr"])
            unknown = names - exported
            assert not unknown, f"panel {panel['title']!r} queries {sorted(unknown)}, not exported by KpiBook"
            used |= names
    # The KPIs the business asked for each have a panel.
    assert {
        "fulfil_kpi_gmv_cny_total",
        "fulfil_kpi_orders_total",
        "fulfil_kpi_payments_total",
        "fulfil_kpi_cancellations_total",
        "fulfil_kpi_fulfilment_seconds_bucket",
        "fulfil_kpi_delivery_seconds_bucket",
        "fulfil_kpi_delivery_seconds_count",
    } <= used


def test_the_ops_console_runs_its_module_on_localhost_8090_with_settings_it_accepts(
    compose_services: dict[str, dict[str, Any]],
) -> None:
    from tools.console.settings import ConsoleSettings

    console = compose_services.get("console")
    assert console is not None, "docker-compose.yml lacks the ops console"
    assert console.get("build") in {".", "./"}
    assert console.get("command") == ["python", "-m", "tools.console"]
    assert Port(LOCALHOST, "8090", "8090") in _ports(console)
    env = _environment(console)
    missing = sorted(_env_names(ConsoleSettings) - env.keys())
    assert not missing, f"docker-compose.yml does not set {missing} for the console"
    values = {
        k.lower(): v for k, v in env.items() if v is not None and "${" not in v and k in _env_names(ConsoleSettings)
    }
    settings = ConsoleSettings.model_validate(values)
    assert (settings.http_host, settings.http_port) == ("0.0.0.0", 8090)
    assert settings.jaeger_ui_url, "the console should link orders into the Jaeger UI that compose runs"


def test_the_cluster_profile_runs_three_brokers_as_one_quorum_that_every_service_bootstraps_from() -> None:
    env_file = ROOT / "deploy" / "compose-cluster.env"
    lines = (ln.strip() for ln in env_file.read_text().splitlines())
    env = dict(ln.split("=", 1) for ln in lines if ln and not ln.startswith("#"))
    services = _compose_services(env)
    brokers = ["kafka", "kafka-2", "kafka-3"]

    assert env["COMPOSE_PROFILES"] == "cluster"
    assert [services[b].get("profiles") for b in brokers] == [None, ["cluster"], ["cluster"]]
    envs = [_environment(services[b]) for b in brokers]
    assert [e["KAFKA_NODE_ID"] for e in envs] == ["1", "2", "3"]
    voters = {e["KAFKA_CONTROLLER_QUORUM_VOTERS"] for e in envs}
    assert voters == {"1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093"}
    for e in envs:
        assert (e["KAFKA_DEFAULT_REPLICATION_FACTOR"], e["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")
        assert e["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
    advertised = {
        listener.split("://", 1)[1]
        for e in envs
        for listener in str(e["KAFKA_ADVERTISED_LISTENERS"]).split(",")
        if listener.startswith("PLAINTEXT://")
    }
    for name in [*SERVICES, "topics"]:
        bootstrap = str(_environment(services[name])["KAFKA_BOOTSTRAP_SERVERS"]).split(",")
        assert set(bootstrap) == advertised, f"{name} bootstraps from {bootstrap}"
    assert services["topics"]["command"][-1] == "--cluster"
    assert {b: services["topics"]["depends_on"][b].get("required", True) for b in brokers} == {
        "kafka": True,
        "kafka-2": False,
        "kafka-3": False,
    }


def test_without_the_profile_one_broker_and_topics_applied_without_a_terminal(
    compose_services: dict[str, dict[str, Any]],
) -> None:
    env = _environment(compose_services["kafka"])
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "1"
    assert compose_services["topics"]["command"] == ["fulfil", "topics", "apply", "--yes", "--no-cluster"]
