"""Production refuses every unencrypted or unauthenticated transport: Kafka, the store and the trace collector.

One safe production configuration, then one change per row that production must refuse, with the reason it gives.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from shared.settings import ServiceSettings

# What a production deployment sets (deploy/k8s): SASL_SSL with SCRAM, a store URL with credentials and TLS, OTLP
# over TLS. Every refusal below changes exactly one thing.
SECURE_TRANSPORTS: dict[str, Any] = {
    "kafka_bootstrap_servers": "kafka.example.net:9094",
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "fulfil",
    "kafka_sasl_password": SecretStr("a-long-random-password"),
    "mongodb_url": "mongodb://fulfil:secret@mongo.example.net:27017/?authSource=admin&tls=true",
    "otel_exporter_otlp_endpoint": "https://collector.example.net:4317",
}
PRODUCTION: dict[str, Any] = {
    "environment": "production",
    "api_keys": SecretStr("static-operator-key-0001"),
    **SECURE_TRANSPORTS,
}


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the row decides: a KAFKA_* or MONGODB_URL of the shell running the tests must not leak in."""
    for name in ServiceSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def test_the_secure_configuration_is_accepted() -> None:
    settings = ServiceSettings(**PRODUCTION)
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.otlp_uses_tls


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param({"kafka_security_protocol": "PLAINTEXT"}, "PLAINTEXT is refused", id="kafka-plaintext"),
        pytest.param({"kafka_security_protocol": "SASL_PLAINTEXT"}, "SASL_PLAINTEXT is refused", id="kafka-sasl-plain"),
        pytest.param({"kafka_security_protocol": "SSL"}, "SSL is refused", id="kafka-tls-without-login"),
        pytest.param({"kafka_sasl_mechanism": "PLAIN"}, "PLAIN is refused", id="sasl-plain-mechanism"),
        pytest.param({"kafka_sasl_mechanism": None}, "SCRAM-SHA-256 or SCRAM-SHA-512", id="sasl-no-mechanism"),
        pytest.param({"kafka_sasl_username": None}, "KAFKA_SASL_USERNAME and", id="sasl-no-username"),
        pytest.param({"kafka_sasl_password": None}, "KAFKA_SASL_PASSWORD must", id="sasl-no-password"),
        pytest.param({"kafka_sasl_password": SecretStr("")}, "KAFKA_SASL_PASSWORD must", id="sasl-empty-password"),
        pytest.param(
            {"mongodb_url": "mongodb://mongo.example.net:27017/?tls=true"}, "carry credentials", id="store-anonymous"
        ),
        pytest.param(
            {"mongodb_url": "mongodb://fulfil@mongo.example.net:27017/?tls=true"},
            "carry credentials",
            id="store-no-password",
        ),
        pytest.param(
            {"mongodb_url": "mongodb://fulfil:secret@mongo.example.net:27017/?authSource=admin"},
            "tls=true",
            id="store-no-tls",
        ),
        pytest.param(
            {"mongodb_url": "mongodb://fulfil:secret@mongo.example.net:27017/?tls=false"},
            "tls=true",
            id="store-tls-off",
        ),
        pytest.param(
            {"mongodb_url": "mongodb+srv://fulfil:secret@cluster.example.net/?ssl=false"},
            "tls=true",
            id="store-srv-tls-off",
        ),
        # TLS that verifies nothing: the store's certificate (or its host name) is not checked.
        pytest.param(
            {"mongodb_url": "mongodb://fulfil:secret@mongo.example.net:27017/?tls=true&tlsInsecure=true"},
            "MONGODB_URL sets tlsInsecure: the store's certificate would not be verified",
            id="store-tls-insecure",
        ),
        pytest.param(
            {"mongodb_url": "mongodb://fulfil:secret@mongo.example.net/?tls=true&tlsAllowInvalidCertificates=true"},
            "MONGODB_URL sets tlsAllowInvalidCertificates",
            id="store-tls-invalid-certificates",
        ),
        pytest.param(
            {"mongodb_url": "mongodb://fulfil:secret@mongo.example.net/?TLS=true&TLSALLOWINVALIDCERTIFICATES=True"},
            "MONGODB_URL sets tlsAllowInvalidCertificates",
            id="store-tls-invalid-certificates-any-case",
        ),
        pytest.param(
            {"mongodb_url": "mongodb+srv://fulfil:secret@cluster.example.net/?tlsAllowInvalidHostnames=true"},
            "MONGODB_URL sets tlsAllowInvalidHostnames",
            id="store-tls-invalid-hostnames",
        ),
        # The placeholders of deploy/k8s/secret.yaml, left in place.
        pytest.param(
            {"api_keys": SecretStr("CHANGE-ME-operator-key-of-32-characters")},
            r"API_KEYS holds the placeholder of deploy/k8s/secret.yaml \(CHANGE-ME",
            id="api-key-placeholder",
        ),
        pytest.param(
            {"api_keys": SecretStr("static-operator-key-0001,change-me-operator-key-of-32-characters")},
            "API_KEYS holds the placeholder",
            id="api-key-placeholder-among-others",
        ),
        pytest.param(
            {"mongodb_url": "mongodb://fulfil:CHANGE-ME@mongo.mongo.svc:27017/?authSource=admin&tls=true"},
            "MONGODB_URL's password is the placeholder",
            id="store-password-placeholder",
        ),
        pytest.param(
            {"kafka_sasl_password": SecretStr("CHANGE-ME")},
            "KAFKA_SASL_PASSWORD is the placeholder",
            id="kafka-password-placeholder",
        ),
        pytest.param({"otel_exporter_otlp_endpoint": "http://collector.example.net:4317"}, "OTLP", id="otlp-plaintext"),
        pytest.param(
            {"otel_exporter_otlp_endpoint": "http://collector.example.net:4317", "otel_exporter_otlp_insecure": True},
            "OTLP",
            id="otlp-insecure-true",
        ),
        pytest.param(
            {"otel_exporter_otlp_endpoint": "collector.example.net:4317", "otel_exporter_otlp_insecure": True},
            "OTLP",
            id="otlp-no-scheme-insecure",
        ),
    ],
)
def test_production_refuses(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        ServiceSettings(**{**PRODUCTION, **change})


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"kafka_ssl_cafile": None}, id="kafka-broker-cert-from-a-public-ca"),
        pytest.param({"kafka_sasl_mechanism": "SCRAM-SHA-256"}, id="scram-sha-256"),
        pytest.param({"mongodb_url": "mongodb+srv://fulfil:secret@cluster.example.net/"}, id="store-srv-is-tls"),
        pytest.param({"mongodb_url": "mongodb://fulfil:secret@db:27017/?ssl=true"}, id="store-ssl-alias"),
        pytest.param(
            {"mongodb_url": "mongodb://fulfil:secret@db:27017/?tls=true&tlsInsecure=false&tlsCAFile=/etc/ca.pem"},
            id="store-tls-insecure-explicitly-off",
        ),
        pytest.param(
            {"otel_exporter_otlp_endpoint": "http://collector:4317", "otel_exporter_otlp_insecure": False},
            id="otlp-insecure-false",
        ),
        pytest.param(
            {"otel_exporter_otlp_endpoint": "http://127.0.0.1:4317", "otlp_allow_plaintext": True},
            id="otlp-plaintext-explicitly-allowed",
        ),
        pytest.param({"otel_exporter_otlp_endpoint": "http://collector:4317", "otel_sdk_disabled": True}, id="no-otlp"),
    ],
)
def test_production_accepts(change: dict[str, Any]) -> None:
    ServiceSettings(**{**PRODUCTION, **change})


@pytest.mark.parametrize("environment", ["development", "test"])
def test_outside_production_the_local_plaintext_stack_is_fine(environment: str) -> None:
    settings = ServiceSettings(environment=environment)
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert settings.transport_problems()  # the same rules see the problems; only production refuses to start


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(ValueError, match=r"PLAINTEXT is refused.*carry credentials.*tls=true.*OTLP"):
        ServiceSettings(
            **{
                **PRODUCTION,
                "kafka_security_protocol": "PLAINTEXT",
                "mongodb_url": "mongodb://db:27017",
                "otel_exporter_otlp_endpoint": "http://collector:4317",
            }
        )
