"""Kafka plumbing: aiokafka producers and consumers with the settings' security, and the FastStream broker that
describes each service's topics for the AsyncAPI documents (``tools.drills.schemas``)."""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
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


def client_options(settings: ServiceSettings) -> dict[str, Any]:
    """aiokafka connection options (bootstrap, SASL/TLS) shared by producers, consumers and admin clients."""
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if "SSL" in settings.kafka_security_protocol:
        opts["ssl_context"] = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        opts["sasl_plain_username"] = settings.kafka_sasl_username or ""
        opts["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
        )
    return opts


def new_producer(settings: ServiceSettings, **options: Any) -> AIOKafkaProducer:
    """A producer on the settings' cluster with their security; ``options`` tune the rest (acks, linger...)."""
    return AIOKafkaProducer(**client_options(settings), **options)


def new_consumer(settings: ServiceSettings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer on the settings' cluster with their security (the tools' readers, the benchmark's tracker)."""
    return AIOKafkaConsumer(*topics, **client_options(settings), **options)


def new_admin(settings: ServiceSettings, **options: Any) -> AIOKafkaAdminClient:
    """An admin client on the settings' cluster with their security."""
    return AIOKafkaAdminClient(**client_options(settings), **options)


def unreachable(settings: ServiceSettings, error: Exception) -> str:
    """One line for an operator when a client cannot connect: where, how, and what to check (never the password)."""
    how: str = settings.kafka_security_protocol
    if how.startswith("SASL"):
        how += f" as {settings.kafka_sasl_username or '(no KAFKA_SASL_USERNAME)'} ({settings.kafka_sasl_mechanism})"
    return (
        f"cannot use Kafka at {settings.kafka_bootstrap_servers} over {how}: {error}. Check the address, "
        "KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD and KAFKA_SSL_CAFILE "
        "(a refused login or certificate is logged above)"
    )


# aiokafka has no ``max.block.ms``: a send first waits for the topic's metadata, and on a producer whose start()
# failed (or was never called) that wait never ends (aio-libs/aiokafka#759). A started producer ends each of its
# waits (metadata, buffer space, delivery) after ``request_timeout_ms``; the services bound every start and send
# on top of that (``shared.runtime``), with room for a healthy producer's metadata wait and delivery in a row.
PRODUCER_REQUEST_TIMEOUT_MS = 15_000
SEND_TIMEOUT_SECONDS = 2 * PRODUCER_REQUEST_TIMEOUT_MS / 1000 + 5


def producer_start_timeout(settings: ServiceSettings) -> float:
    """How long a producer's start may take: aiokafka tries the bootstrap servers one after another, each with a
    connection and a metadata request bounded by ``request_timeout_ms`` (a host that drops packets costs both)."""
    hosts = [h for h in settings.kafka_bootstrap_servers.split(",") if h.strip()]
    return 2 * PRODUCER_REQUEST_TIMEOUT_MS / 1000 * max(len(hosts), 1) + 5


def make_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """The hot path's producer: acks from all in-sync replicas, idempotent, and a short linger so the records of
    many concurrent handlers leave in one request per partition."""
    return AIOKafkaProducer(
        **client_options(settings),
        client_id=settings.service_name,
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.kafka_linger_ms,
        max_batch_size=256 * 1024,
        request_timeout_ms=PRODUCER_REQUEST_TIMEOUT_MS,
    )


def make_consumer(settings: ServiceSettings, *topics: str, group: str) -> AIOKafkaConsumer:
    """A consumer whose offsets are committed by the pipeline only once the work is durable (no auto-commit)."""
    return AIOKafkaConsumer(
        *topics,
        **client_options(settings),
        client_id=settings.service_name,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.consumer_max_batch,
        max_poll_interval_ms=60_000,  # the poll loop never waits for handlers (see shared.consumer.Pipeline)
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
        fetch_max_wait_ms=50,
        # Every saga topic has the same partitions and the same key (the order id), so the range assignor gives a
        # copy partition p of every topic it reads: all of one order's events reach the copy whose cache holds the
        # order's newest version (spread over copies, each event would meet a stale cache: a refused insert, a read
        # and a second insert). Round robin is offered second so that a group in a rolling upgrade agrees on one.
        partition_assignment_strategy=(RangePartitionAssignor, RoundRobinPartitionAssignor),
    )


def header_map(record: Any) -> dict[str, str]:
    """A record's headers as text (bytes that are not UTF-8 replaced): what tracing, dead letters and tools read."""
    return {k: v.decode("utf-8", "replace") for k, v in (record.headers or ())}
