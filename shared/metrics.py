"""Prometheus metrics every service exposes on ``/metrics``. Names are shared so dashboards work for all five."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "fulfil_messages_handled_total",
    "Records handled, by topic, event type and outcome",
    ["topic", "event_type", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "fulfil_handler_duration_seconds",
    "Time to handle one record, retries included",
    ["topic", "event_type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RETRIES = Counter("fulfil_handler_retries_total", "Transient failures retried in place")
DEAD_LETTERS = Counter("fulfil_dead_letters_total", "Records sent to a dead-letter topic", ["topic", "error_class"])
OUTBOX_BACKLOG = Gauge("fulfil_outbox_backlog", "Events written but not yet acknowledged by Kafka")
OUTBOX_OLDEST_AGE = Gauge("fulfil_outbox_oldest_pending_age_seconds", "Age of the oldest unpublished event")
PUBLISHED = Counter("fulfil_events_published_total", "Events published by the outbox relay", ["topic", "event_type"])
CONSUMER_LAG = Gauge("fulfil_consumer_lag", "Records behind the end of each assigned partition", ["topic", "partition"])
SAGAS = Counter("fulfil_sagas_total", "Sagas that reached a terminal status", ["outcome", "reason"])
SAGA_SECONDS = Histogram(
    "fulfil_saga_duration_seconds",
    "Placement to terminal status",
    ["outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
