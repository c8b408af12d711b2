"""deploy/k8s/ is valid Kubernetes and runs every service highly available.

Each manifest is validated against the Kubernetes OpenAPI schemas shipped with ``kubernetes-validate`` (strict:
unknown fields fail; nothing is downloaded). Then: two or more replicas per Deployment, probes on ``/health`` and
``/ready``, a PodDisruptionBudget and a Service per Deployment, and the environment of each Deployment covers its
settings class (``services.<name>.app.Settings``) exactly, as tests/test_compose.py checks for docker-compose.yml.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from shared.settings import ServiceSettings

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"
SERVICE_PORTS = {"order": 8080, "payment": 8081, "inventory": 8082, "shipping": 8083, "notify": 8084}

Manifest = dict[str, Any]


def _documents(path: Path) -> list[Manifest]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _kustomization() -> Manifest:
    docs = _documents(K8S / "kustomization.yaml")
    assert len(docs) == 1
    return docs[0]


MANIFEST_FILES = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
RESOURCES = [d for p in MANIFEST_FILES for d in _documents(p)]


def _of_kind(kind: str) -> dict[str, Manifest]:
    return {d["metadata"]["name"]: d for d in RESOURCES if d["kind"] == kind}


def _container(name: str) -> Manifest:
    containers = _of_kind("Deployment")[name]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


@pytest.mark.parametrize("resource", RESOURCES, ids=[f"{d['kind']}/{d['metadata']['name']}" for d in RESOURCES])
def test_manifest_is_valid_against_the_kubernetes_schema(resource: Manifest) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    assert sorted(_kustomization()["resources"]) == sorted(p.name for p in MANIFEST_FILES)


def test_every_service_has_a_deployment_a_service_and_a_disruption_budget() -> None:
    assert set(_of_kind("Deployment")) == set(SERVICE_PORTS)
    assert set(_of_kind("Service")) == set(SERVICE_PORTS)
    assert set(_of_kind("PodDisruptionBudget")) == set(SERVICE_PORTS)


@pytest.mark.parametrize("name", SERVICE_PORTS)
def test_deployment_runs_at_least_two_replicas_that_a_disruption_cannot_all_take(name: str) -> None:
    deployment = _of_kind("Deployment")[name]
    assert deployment["spec"]["replicas"] >= 2
    pdb = _of_kind("PodDisruptionBudget")[name]
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"].get("minAvailable", 0) >= 1 or pdb["spec"].get("maxUnavailable") == 1
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("name", SERVICE_PORTS)
def test_liveness_probes_health_and_readiness_probes_ready(name: str) -> None:
    container = _container(name)
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["port"] == "http"
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("name", SERVICE_PORTS)
def test_service_exposes_the_http_port_of_its_pods(name: str) -> None:
    port = SERVICE_PORTS[name]
    assert _container(name)["ports"] == [{"name": "http", "containerPort": port}]
    service = _of_kind("Service")[name]
    assert service["spec"]["selector"] == _of_kind("Deployment")[name]["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "http", "port": port, "targetPort": "http"}]


def _environment(name: str) -> dict[str, str]:
    """Every variable the container gets: its `env` plus the keys of the ConfigMaps and Secrets in `envFrom`."""
    container = _container(name)
    env = {e["name"]: str(e.get("value", "")) for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source["secretRef"]
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        data = _of_kind(kind)[ref["name"]]
        env.update({k: str(v) for k, v in {**data.get("data", {}), **data.get("stringData", {})}.items()})
    return env


@pytest.mark.parametrize("name", SERVICE_PORTS)
def test_environment_sets_exactly_the_settings_of_the_service(name: str) -> None:
    settings: type[ServiceSettings] = importlib.import_module(f"services.{name}.app").Settings
    env = _environment(name)
    assert set(env) == {field.upper() for field in settings.model_fields}
    assert env["SERVICE_NAME"] == name
    assert env["HTTP_PORT"] == str(SERVICE_PORTS[name])
    assert env["HTTP_HOST"] == "0.0.0.0"  # inside the pod, reached through the Service
    # Production rules hold once the Secret's placeholders are replaced, as secret.yaml tells the operator to.
    settings.model_validate({k.lower(): _replaced(v) for k, v in env.items()})


def _replaced(value: str) -> str:
    """A Secret's value as an operator fills it in: the placeholder becomes a random string."""
    return value.replace("CHANGE-ME", "k3Qz9vXw2Lp8Rt5Y")


@pytest.mark.parametrize("name", SERVICE_PORTS)
def test_the_secret_template_as_shipped_is_refused_in_production(name: str) -> None:
    settings: type[ServiceSettings] = importlib.import_module(f"services.{name}.app").Settings
    env = _environment(name)
    with pytest.raises(ValueError, match=r"API_KEYS holds the placeholder of deploy/k8s/secret\.yaml"):
        settings.model_validate({k.lower(): v for k, v in env.items()})
    with pytest.raises(ValueError, match=r"MONGODB_URL's password is the placeholder.*KAFKA_SASL_PASSWORD is the"):
        settings.model_validate({k.lower(): v for k, v in env.items()} | {"api_keys": _replaced(env["API_KEYS"])})
