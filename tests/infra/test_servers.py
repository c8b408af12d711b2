"""The local stack's servers are real and behave as the services rely on."""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from tests.conftest import Endpoints, load_stack

pytestmark = pytest.mark.infra


async def test_kafka_round_trip_with_acks_all_and_idempotence(endpoints: Endpoints) -> None:
    topic = f"test.infra.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=endpoints.kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=endpoints.kafka, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [await producer.send_and_wait(topic, key=b"order-1", value=f"m{i}".encode()) for i in range(5)]
    finally:
        await producer.stop()
    # One key, one partition: the broker kept the order we sent in.
    assert len({md.partition for md in sent}) == 1
    assert [md.offset for md in sent] == sorted(md.offset for md in sent)

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=endpoints.kafka,
        auto_offset_reset="earliest",
        group_id=f"g-{topic}",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < 5 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            got += [rec.value for recs in batch.values() for rec in recs]
        await consumer.commit()
    finally:
        await consumer.stop()
    assert got == [f"m{i}".encode() for i in range(5)]


async def test_mongo_insert_read_back_and_unique_index(endpoints: Endpoints) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(endpoints.mongodb_url)
    coll = client["test_infra"][f"c_{uuid.uuid4().hex[:8]}"]
    try:
        await coll.create_index("event_id", unique=True)
        await coll.insert_one({"_id": "a", "event_id": "e-1", "total": "79.80"})
        assert await coll.find_one({"_id": "a"}) == {"_id": "a", "event_id": "e-1", "total": "79.80"}
        with pytest.raises(DuplicateKeyError):
            await coll.insert_one({"_id": "b", "event_id": "e-1"})
        # A conditional single-document update is what every service's store relies on.
        res = await coll.find_one_and_update({"_id": "a", "total": "79.80"}, {"$set": {"total": "0"}})
        assert res is not None
        assert await coll.find_one_and_update({"_id": "a", "total": "79.80"}, {"$set": {"total": "1"}}) is None
    finally:
        await coll.drop()
        await client.close()


def test_span_exported_over_otlp_is_found_in_jaeger(endpoints: Endpoints) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    service = f"infra-test-{uuid.uuid4().hex[:6]}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoints.otlp_endpoint, insecure=True)))
    with provider.get_tracer("infra-test").start_as_current_span("probe") as span:
        span.set_attribute("order.id", "SHOP1-INFRA")
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()

    deadline = time.monotonic() + 20
    data: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        r = httpx.get(f"{endpoints.jaeger_query_url}/api/traces/{trace_id}", timeout=5)
        if r.status_code == 200 and (data := r.json().get("data") or []):
            break
        time.sleep(0.5)
    assert data, f"trace {trace_id} never appeared in Jaeger"
    spans = data[0]["spans"]
    assert isinstance(spans, list)
    assert [s["operationName"] for s in spans] == ["probe"]
    assert {"key": "order.id", "type": "string", "value": "SHOP1-INFRA"} in spans[0]["tags"]


async def test_mail_sent_over_smtp_is_listed_by_the_sink(endpoints: Endpoints) -> None:
    marker = uuid.uuid4().hex
    msg = EmailMessage()
    msg["From"] = "shop@example.com"
    msg["To"] = "buyer@example.com"
    msg["Subject"] = f"infra probe {marker}"
    msg.set_content("您的订单已发货 / your order shipped")

    def send() -> None:
        with smtplib.SMTP(endpoints.smtp_host, endpoints.smtp_port, timeout=10) as smtp:
            smtp.send_message(msg)

    await asyncio.to_thread(send)
    async with httpx.AsyncClient(base_url=endpoints.smtp_api_url, timeout=5) as http:
        listing = (await http.get("/api/v1/messages")).json()
        found = [m for m in listing["messages"] if m["Subject"] == f"infra probe {marker}"]
        assert len(found) == 1
        assert found[0]["To"][0]["Address"] == "buyer@example.com"
        full = (await http.get(f"/api/v1/message/{found[0]['ID']}")).json()
        assert "您的订单已发货" in full["Text"]


@pytest.mark.parametrize("cluster_id", ["-h3X9q2bQpS0dXmVYl1lTw", "MkU3OEVBNTcwNTJENDM2Qg"])
def test_kafka_storage_formats_with_any_cluster_id_even_one_that_looks_like_an_option(
    tmp_path: Path, cluster_id: str
) -> None:
    """A base64url cluster id begins with ``-`` once in 64: given as its own argument, kafka-storage took it for an
    option and ``make up`` failed on a fresh clone."""
    stack = load_stack()
    props = tmp_path / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                "controller.quorum.voters=1@127.0.0.1:19093",
                "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093",
                "controller.listener.names=CONTROLLER",
                f"log.dirs={tmp_path / 'data'}",
            ]
        )
    )
    done = subprocess.run(
        stack.kafka_format_command(stack.kafka_libs(), cluster_id, props), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    meta = (tmp_path / "data" / "meta.properties").read_text()
    assert f"cluster.id={cluster_id}" in meta
