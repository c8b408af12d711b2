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
IN_FLIGHT = Gauge("fulfil_records_in_flight", "Records fetched and not yet done (processed or dead-lettered)")
PUBLISHED = Counter("fulfil_events_published_total", "Events published from the outbox", ["topic", "event_type"])
DEADLINES_POSTPONED = Counter(
    "fulfil_deadlines_postponed_total", "Deadlines looked at again later because the saga's queues were behind"
)
ORDERS_OVERDUE = Counter(
    "fulfil_orders_overdue_total", "Deadline alerts for orders that cannot be cancelled (shipment scheduled)"
)
CONSUMER_LAG = Gauge("fulfil_consumer_lag", "Records behind the end of each assigned partition", ["topic", "partition"])
SAGAS = Counter("fulfil_sagas_total", "Sagas that reached a terminal status", ["outcome", "reason"])
SAGA_SECONDS = Histogram(
    "fulfil_saga_duration_seconds",
    "Placement to terminal status",
    ["outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
STORE_COMMANDS = Counter(
    "fulfil_store_commands_total", "Store round trips, by command and collection", ["command", "collection"]
)
STORE_BATCH = Histogram(
    "fulfil_store_batch_documents",
    "Documents per grouped store write (inserts, or replaces and deletes), by collection",
    ["collection"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 500),
)
STORE_SECONDS = Counter(
    "fulfil_store_command_seconds_total",
    "Time spent waiting for the store, by command and collection",
    ["command", "collection"],
)
PAYMENT_ALERTS = Counter(
    "fulfil_payment_alerts_total",
    "Provider reports or answers that need a person: a notification or trade that does not match our record, "
    "a refund refused or failed",
    ["provider", "kind"],
)
CARRIER_PUSHES = Counter(
    "fulfil_carrier_pushes_total",
    "Route pushes received on the shipping service's notify endpoints, by outcome (accepted, refused, ...)",
    ["carrier", "outcome"],
)
PROVIDER_NOTIFICATIONS = Counter(
    "fulfil_provider_notifications_total",
    "Notifications received on the payment service's notify endpoints, by outcome (accepted, refused)",
    ["provider", "outcome"],
)
DEADLINES_FORCED = Counter(
    "fulfil_deadlines_forced_total",
    "Orders cancelled at their deadline although the saga's queues still held a record of theirs (postponed too long)",
)
