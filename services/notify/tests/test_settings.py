"""Notify's settings: production refuses to hand customers' mail over in plaintext, as it refuses plaintext Kafka,
store and trace connections (``transport_problems``); the local sink stays plaintext outside production."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from services.notify.app import Settings

# A production deployment's settings (deploy/k8s), the shared transports secure: only SMTP varies below.
PRODUCTION: dict[str, Any] = {
    "environment": "production",
    "api_keys": SecretStr("notify-operator-key-0001"),
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "fulfil",
    "kafka_sasl_password": SecretStr("a-long-random-password"),
    "mongodb_url": "mongodb://fulfil:secret@mongo.example.net:27017/?authSource=admin&tls=true",
    "otel_exporter_otlp_endpoint": "https://collector.example.net:4317",
    "smtp_host": "smtp.mail.svc",
    "smtp_port": 587,
}


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def test_production_refuses_plaintext_smtp() -> None:
    with pytest.raises(ValueError, match="SMTP must be encrypted"):
        Settings(**PRODUCTION)


@pytest.mark.parametrize(
    "smtp",
    [
        pytest.param({"smtp_starttls": True}, id="starttls"),
        pytest.param({"smtp_tls": True, "smtp_port": 465}, id="implicit-tls"),
        pytest.param({"smtp_starttls": True, "smtp_ca_file": "/etc/fulfil/smtp-ca/ca.pem"}, id="starttls-own-ca"),
    ],
)
def test_production_accepts_encrypted_smtp(smtp: dict[str, Any]) -> None:
    settings = Settings(**{**PRODUCTION, **smtp})
    assert settings.smtp_starttls or settings.smtp_tls


def test_the_ca_file_defaults_to_the_systems_cas() -> None:
    assert Settings(**PRODUCTION, smtp_starttls=True).smtp_ca_file is None


def test_starttls_and_implicit_tls_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        Settings(environment="development", smtp_starttls=True, smtp_tls=True)


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(ValueError, match=r"PLAINTEXT is refused.*SMTP must be encrypted"):
        Settings(**{**PRODUCTION, "kafka_security_protocol": "PLAINTEXT"})


@pytest.mark.parametrize("environment", ["development", "test"])
def test_outside_production_the_local_plaintext_sink_is_fine(environment: str) -> None:
    settings = Settings(environment=environment)
    assert not settings.smtp_starttls
    assert any("SMTP" in p for p in settings.transport_problems())  # seen by the same rules; refused in production
