"""API keys guard the business HTTP APIs; probes and scrapers stay open."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.inventory.app import Settings, create_app


@pytest.fixture(scope="module")
def client() -> TestClient:
    # No lifespan (no `with`): nothing connects, which is enough to exercise the request guard.
    return TestClient(create_app(Settings(api_keys=SecretStr("key-one,key-two"), otel_sdk_disabled=True)))


def test_business_api_without_a_key_is_refused_with_401(client: TestClient) -> None:
    r = client.put("/stock/SKU-RED-MUG", json={"available": 5})
    assert r.status_code == 401
    assert r.json() == {"detail": "missing or unknown X-API-Key"}


@pytest.mark.infra  # a key that is not a static one is looked up (hashed) among the storefront keys in the store
def test_business_api_with_an_unknown_key_is_refused(client: TestClient) -> None:
    assert client.get("/stock/SKU-RED-MUG", headers={"X-API-Key": "key-three"}).status_code == 401


def test_holds_per_order_are_for_operators_only(client: TestClient) -> None:
    assert client.get("/stock/SKU-RED-MUG/holds").status_code == 401


def test_health_needs_no_key(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "service": "inventory"}


def test_production_refuses_to_start_without_api_keys() -> None:
    with pytest.raises(ValueError, match="API_KEYS must be set"):
        Settings(environment="production", kafka_security_protocol="SASL_SSL")
