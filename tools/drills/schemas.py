"""Generated contract documents: a JSON Schema per event, and AsyncAPI documents from the services' brokers.

    python -m tools.drills.schemas          # (re)write docs/schemas/, docs/asyncapi.json and docs/asyncapi/
    python -m tools.drills.schemas --check  # write nothing; exit 1 listing every stale, missing or extra file

``make docs`` runs the first; ``tests/test_contract_docs.py`` runs the second, so the committed documents
never drift from the models in ``shared/events``.

The AsyncAPI documents come from FastStream (``faststream.specification.AsyncAPI``). Each service is built by
its real ``create_service()`` (which constructs objects and connects to nothing), so its subscriber and input
topics are the ones it runs with. For the documents only, its broker gets a publisher per output topic whose
``schema`` is the union of that topic's events (at runtime the outbox relay publishes raw bytes and declares
no publisher). FastStream's output is then corrected in two ways: payloads are *serialization* schemas (what
is on the wire: money is a decimal string, never a number), and every message on a topic carries the union of
that topic's events -- a subscriber's message also names the ones its service handles, since FastStream sees
only the raw record there.

Every file is JSON with sorted keys, indent 2 and a trailing newline, and does not depend on the environment.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from faststream.kafka import KafkaBroker
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.inventory import app as inventory_app
from services.inventory import handlers as inventory_handlers
from services.notify import app as notify_app
from services.notify import handlers as notify_handlers
from services.order import app as order_app
from services.order import handlers as order_handlers
from services.payment import app as payment_app
from services.payment import handlers as payment_handlers
from services.shipping import app as shipping_app
from services.shipping import handlers as shipping_handlers
from shared import topics
from shared.events import EVENTS_BY_TOPIC, known_event_types
from shared.events import event_models as topic_models
from shared.events.base import SCHEMA_VERSION
from shared.events.storefront import OrderRequest
from shared.kafka import make_broker
from shared.runtime import Service

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS_DIR = Path("docs/schemas")
ASYNCAPI_DIR = Path("docs/asyncapi")
ASYNCAPI_FILE = Path("docs/asyncapi.json")

SERVICES = ("order", "payment", "inventory", "shipping", "notify")
# The server the documents name: the local stack, whatever the environment says.
DOCS_KAFKA = "127.0.0.1:9092"
COMPONENT_REF = "#/components/schemas/{model}"
_DESCRIPTION = "Generate (or --check) the JSON Schemas and AsyncAPI documents of the event contracts."


@dataclass(frozen=True)
class Output:
    """A topic a service writes, as the AsyncAPI documents show it."""

    topic: str
    title: str
    description: str


OUTPUTS: dict[str, tuple[Output, ...]] = {
    "order": (
        Output(
            topics.ORDER_EVENTS,
            "order:publish",
            "The order's decisions, through the outbox: the saga starts, ends, or a cancellation is refused.",
        ),
        Output(
            topics.STOREFRONT_ORDERS,
            "order:api:publish",
            "The order API (POST /orders, POST /orders/{order_id}/cancel) publishes here exactly as a "
            "storefront would, so there is one path into the saga.",
        ),
    ),
    "payment": (Output(topics.PAYMENT_EVENTS, "payment:publish", "Authorisation, capture, void and refund."),),
    "inventory": (Output(topics.INVENTORY_EVENTS, "inventory:publish", "Stock reserved, unavailable or released."),),
    "shipping": (Output(topics.SHIPPING_EVENTS, "shipping:publish", "Shipment scheduled, failed or called back."),),
    "notify": (Output(topics.NOTIFY_EVENTS, "notify:publish", "One e-mail per outcome: sent or failed."),),
}


# ---------------------------------------------------------------- JSON Schema per event


def event_models() -> list[type[BaseModel]]:
    """Every event model of every topic, in topic order then union order."""
    return [model for union in EVENTS_BY_TOPIC.values() for model in topic_models(union)]


def event_type_of(model: type[BaseModel]) -> str:
    return str(model.model_fields["event_type"].default)


def dump(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def event_schemas() -> dict[Path, str]:
    """docs/schemas/<EventType>.json for every event, and OrderRequest.json for the POST /orders body."""
    files = {
        SCHEMAS_DIR / f"{event_type_of(m)}.json": dump(m.model_json_schema(mode="serialization"))
        for m in event_models()
    }
    files[SCHEMAS_DIR / "OrderRequest.json"] = dump(OrderRequest.model_json_schema(mode="serialization"))
    return files


# ---------------------------------------------------------------- AsyncAPI from the services' brokers


# The services, imported openly: the generator is an application on top of them (never the library under them).
APPS: dict[str, ModuleType] = {
    "order": order_app,
    "payment": payment_app,
    "inventory": inventory_app,
    "shipping": shipping_app,
    "notify": notify_app,
}
HANDLERS: dict[str, ModuleType] = {
    "order": order_handlers,
    "payment": payment_handlers,
    "inventory": inventory_handlers,
    "shipping": shipping_handlers,
    "notify": notify_handlers,
}


@dataclass(frozen=True)
class Described:
    """A service as ``create_service()`` builds it, and a FastStream broker describing its topics."""

    name: str
    service: Service
    broker: KafkaBroker


def _build_service(name: str) -> Described:
    """The service as ``create_service()`` builds it, with settings pinned so the output is reproducible."""
    app: Any = APPS[name]
    settings = app.Settings(
        service_name=name,
        environment="development",
        kafka_bootstrap_servers=DOCS_KAFKA,
        kafka_security_protocol="PLAINTEXT",
        otel_sdk_disabled=True,
        log_format="json",
        log_level="WARNING",
    )
    service: Service = app.create_service(settings)
    broker = make_broker(settings)
    # The topics a service reads, as FastStream describes a subscriber (the pipeline of shared.consumer runs them).
    broker.subscriber(*service.inputs, group_id=name, title=f"{name}:consume")(_documented_only)
    for out in OUTPUTS[name]:
        broker.publisher(
            out.topic,
            schema=EVENTS_BY_TOPIC[out.topic],
            title=out.title,
            description=out.description,
        )
    return Described(name, service, broker)


async def _documented_only(body: Any) -> None:  # never runs: this broker only describes the service's topics
    return None


def _service_description(name: str) -> str:
    doc = HANDLERS[name].__doc__ or ""
    return " ".join(doc.split())


def _walk_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _walk_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_refs(item)


def _schema_name(ref: str) -> str | None:
    prefix = COMPONENT_REF.format(model="")
    return ref[len(prefix) :] if ref.startswith(prefix) else None


def _wire_definitions() -> dict[str, Any]:
    """Serialization-mode schemas of every event model and the models inside them, keyed by component name."""
    _, top = models_json_schema([(m, "serialization") for m in event_models()], ref_template=COMPONENT_REF)
    definitions: dict[str, Any] = top.get("$defs", {})
    return definitions


def _topic_payload(topic: str) -> str:
    return f"{topic}:Payload"


def _correct(document: dict[str, Any], services: Iterable[Described]) -> dict[str, Any]:
    """Wire schemas instead of validation schemas, and one payload per topic: the union of its events.

    Every message on a topic (published or consumed) refers to ``<topic>:Payload``; a subscriber's message
    also says which of those events the service handles.
    """
    components = document.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    messages: dict[str, Any] = components.setdefault("messages", {})
    wire = _wire_definitions()
    for name in list(schemas):
        if name in wire:
            schemas[name] = wire[name]

    handled_by_service = {
        d.name: set(d.service.registry.handlers) | set(d.service.registry.invalid_handlers) for d in services
    }
    for channel_name, channel in document.get("channels", {}).items():
        topic = channel.get("address")
        if topic not in EVENTS_BY_TOPIC:
            continue
        schemas[_topic_payload(topic)] = {
            "title": _topic_payload(topic),
            "description": f"One event of {topic}; event_type says which.",
            "oneOf": [{"$ref": COMPONENT_REF.format(model=m.__name__)} for m in topic_models(EVENTS_BY_TOPIC[topic])],
            "discriminator": "event_type",  # AsyncAPI: the name of the property
        }
        owner, _, role = channel_name.partition(":")
        for ref in _walk_refs(channel.get("messages", {})):
            message = messages[ref.rsplit("/", 1)[-1]]
            message["payload"] = {"$ref": COMPONENT_REF.format(model=_topic_payload(topic))}
            if role.startswith("consume") and owner in handled_by_service:
                handled = sorted(handled_by_service[owner] & known_event_types(topic))
                message["description"] = (
                    f"Every event on {topic} arrives here; {owner} handles "
                    f"{', '.join(handled) or 'none'} and skips the others. A record that cannot be processed "
                    f"goes to {topics.dlq(topic)} with x-dlq-* headers."
                )

    # Add the wire definitions the document now refers to, then drop what nothing refers to.
    reachable: set[str] = set()
    pending = [
        n for r in _walk_refs({k: v for k, v in document.items() if k != "components"}) if (n := _schema_name(r))
    ]
    pending += [n for r in _walk_refs(messages) if (n := _schema_name(r))]
    while pending:
        name = pending.pop()
        if name in reachable:
            continue
        reachable.add(name)
        if name not in schemas and name in wire:
            schemas[name] = wire[name]
        pending += [n for r in _walk_refs(schemas.get(name, {})) if (n := _schema_name(r))]
    components["schemas"] = {name: schema for name, schema in schemas.items() if name in reachable}
    return document


def asyncapi_documents() -> dict[Path, str]:
    """docs/asyncapi/<service>.json for each service, and docs/asyncapi.json with all five."""
    from faststream.specification import AsyncAPI

    # Each create_service() installs a tracer provider; OpenTelemetry keeps the first, warns about the rest.
    otel_log = logging.getLogger("opentelemetry.trace")
    level = otel_log.level
    otel_log.setLevel(logging.ERROR)
    try:
        built = [_build_service(name) for name in SERVICES]
    finally:
        otel_log.setLevel(level)
    version = f"{SCHEMA_VERSION}.0.0"
    files: dict[Path, str] = {}
    for d in built:
        spec = AsyncAPI(
            d.broker,
            title=f"fulfil {d.name} service",
            version=version,
            description=_service_description(d.name),
        )
        files[ASYNCAPI_DIR / f"{d.name}.json"] = dump(_correct(spec.to_specification().to_jsonable(), [d]))
    everything = AsyncAPI(
        *(d.broker for d in built),
        title="fulfil",
        version=version,
        description=(
            "Order fulfilment for online shops: five services (order, payment, inventory, shipping, notify) "
            "talking only through Kafka. Every record is keyed by order_id; see docs/events.md."
        ),
    )
    files[ASYNCAPI_FILE] = dump(_correct(everything.to_specification().to_jsonable(), built))
    return files


# ---------------------------------------------------------------- write and check


def render() -> dict[Path, str]:
    """Every generated file (path relative to the repository) and its exact content."""
    return {**event_schemas(), **asyncapi_documents()}


def unexpected(files: dict[Path, str], root: Path = ROOT) -> list[Path]:
    """JSON files in the generated folders that the generator no longer produces (a removed event, say)."""
    found = {p.relative_to(root) for d in (SCHEMAS_DIR, ASYNCAPI_DIR) for p in (root / d).glob("*.json")}
    return sorted(found - set(files))


def stale(files: dict[Path, str], root: Path = ROOT) -> list[str]:
    """One line per file that differs from ``files``: missing, out of date, or no longer generated."""
    problems = []
    for path, text in sorted(files.items()):
        target = root / path
        if not target.exists():
            problems.append(f"missing: {path}")
        elif target.read_text(encoding="utf-8") != text:
            problems.append(f"out of date: {path}")
    problems += [f"not generated any more: {path}" for path in unexpected(files, root)]
    return problems


def write(files: dict[Path, str], root: Path = ROOT) -> list[Path]:
    """Write what changed, remove what is no longer generated; returns the paths touched."""
    touched = []
    for path in unexpected(files, root):
        (root / path).unlink()
        touched.append(path)
    for path, text in sorted(files.items()):
        target = root / path
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        touched.append(path)
    return touched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.drills.schemas", description=_DESCRIPTION)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any file is stale")
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        problems = stale(files)
        if problems:
            print("contract documents are stale (run `make docs`):", *problems, sep="\n  ", file=sys.stderr)
            return 1
        print(f"{len(files)} contract documents up to date")
        return 0
    touched = write(files)
    for path in touched:
        print(f"wrote {path}" if (ROOT / path).exists() else f"removed {path}")
    print(f"{len(files)} contract documents, {len(touched)} changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
