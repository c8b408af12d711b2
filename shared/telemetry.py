"""Tracing: one tracer provider per service, W3C context carried in Kafka headers and through the outbox."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import grpc  # type: ignore[import-untyped]  # grpcio ships no type hints
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

__all__ = ["SpanKind", "configure", "context_from_headers", "current_context_headers", "current_trace_id", "tracer"]

from shared.settings import ServiceSettings

_provider: TracerProvider | None = None


def configure(settings: ServiceSettings) -> TracerProvider:
    """Install the service's tracer provider. Export is batched in a background thread: it never blocks a handler."""
    global _provider
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name, "service.namespace": "fulfil"}),
        sampler=ParentBased(TraceIdRatioBased(settings.otel_traces_sampler_arg)),
    )
    if not settings.otel_sdk_disabled:
        exporter = OTLPSpanExporter(
            endpoint=settings.otel_exporter_otlp_endpoint,
            insecure=not settings.otlp_uses_tls,
            credentials=_tls_credentials(settings.otel_exporter_otlp_certificate) if settings.otlp_uses_tls else None,
            timeout=5,
        )
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def _tls_credentials(cafile: str | None) -> grpc.ChannelCredentials:
    """TLS to the collector, verified by ``cafile`` (the CA that signed its certificate) or the system's CAs."""
    return grpc.ssl_channel_credentials(root_certificates=Path(cafile).read_bytes() if cafile else None)


def shutdown() -> None:
    if _provider is not None:
        _provider.shutdown()


def tracer(name: str = "fulfil") -> trace.Tracer:
    return trace.get_tracer(name)


def current_context_headers() -> dict[str, str]:
    """The current trace context as W3C headers (``traceparent``), to store with outbox records."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def context_from_headers(headers: Mapping[str, str]) -> otel_context.Context:
    return propagate.extract(dict(headers))


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
