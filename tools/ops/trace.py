"""An order's trace from Jaeger, as a waterfall of spans (``fulfil trace`` and the console's order page)."""

from __future__ import annotations

from typing import Any

import httpx


def fetch_trace(jaeger_url: str, trace_id: str) -> dict[str, Any]:
    r = httpx.get(f"{jaeger_url}/api/traces/{trace_id}", timeout=10)
    if r.status_code == 404 or not r.json().get("data"):
        raise LookupError(f"trace {trace_id} not found in Jaeger at {jaeger_url}")
    r.raise_for_status()
    data: dict[str, Any] = r.json()["data"][0]
    return data


def waterfall(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """Spans in start order with service, operation, offset and duration in ms, and whether they failed."""
    procs = {k: v["serviceName"] for k, v in trace["processes"].items()}
    spans = sorted(trace["spans"], key=lambda s: s["startTime"])
    t0 = spans[0]["startTime"] if spans else 0
    rows = []
    for span in spans:
        tags = {t["key"]: t["value"] for t in span.get("tags", [])}
        rows.append(
            {
                "service": procs.get(span["processID"], "?"),
                "operation": span["operationName"],
                "start_ms": (span["startTime"] - t0) / 1000,
                "duration_ms": span["duration"] / 1000,
                "error": bool(tags.get("error")) or tags.get("otel.status_code") == "ERROR",
                "order_id": tags.get("order.id"),
            }
        )
    return rows
