"""Kafka plumbing: the broker every service uses, and raw publishing for the relay and the dead-letter path."""

from __future__ import annotations

import logging
import ssl

from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from shared.settings import ServiceSettings


def security(settings: ServiceSettings) -> BaseSecurity | None:
    """SASL/TLS from settings; None on the PLAINTEXT local stack."""
    proto = settings.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    ctx = ssl.create_default_context(cafile=settings.kafka_ssl_cafile) if "SSL" in proto else None
    if proto == "SSL":
        return BaseSecurity(ssl_context=ctx, use_ssl=True)
    user = settings.kafka_sasl_username or ""
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    use_ssl = proto == "SASL_SSL"
    if settings.kafka_sasl_mechanism == "SCRAM-SHA-512":
        return SASLScram512(user, password, ssl_context=ctx, use_ssl=use_ssl)
    if settings.kafka_sasl_mechanism == "SCRAM-SHA-256":
        return SASLScram256(user, password, ssl_context=ctx, use_ssl=use_ssl)
    return SASLPlaintext(user, password, ssl_context=ctx, use_ssl=use_ssl)


def make_broker(settings: ServiceSettings) -> KafkaBroker:
    """A broker whose producer waits for all in-sync replicas and is idempotent (no duplicates on retry)."""
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        client_id=settings.service_name,
        security=security(settings),
        allow_auto_create_topics=False,
        graceful_timeout=10.0,
        # FastStream's per-message "Received/Processed" lines would double ours (shared/consumer.py logs each
        # handled event with its trace); keep its warnings and errors, rendered as JSON by shared/logging.py.
        logger=logging.getLogger("faststream"),
        log_level=logging.DEBUG,
        request_timeout_ms=15_000,
    )


async def publish_raw(
    broker: KafkaBroker,
    *,
    topic: str,
    key: bytes | None,
    value: bytes,
    headers: dict[str, str],
) -> None:
    """Publish bytes exactly as given (the relay's and the DLQ's path) and wait for acks=all."""
    await broker.publish(value, topic, key=key, headers=headers)
