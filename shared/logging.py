"""Logging through structlog: JSON lines (pretty on a terminal), trace ids attached, personal data masked.

Every service calls :func:`configure` once. :func:`mask_personal_data` is the one place that decides what a log
may show of a customer: e-mail -> ``x***@example.com``, phone -> last 4 digits, names and address lines masked,
card numbers and payment tokens never.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from opentelemetry import trace

from shared.events.storefront import redact_card_numbers
from shared.settings import ServiceSettings

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_PHONE = re.compile(r"\+?\d[\d ()-]{6,18}(\d{4})")
_SECRET_KEYS = {
    "token",
    "payment_token",
    "card",
    "card_number",
    "pan",
    "password",
    "api_key",
    "authorization",
}
_NAME_KEYS = {"name", "recipient", "customer_name", "line1", "line2", "address", "street", "city", "postal_code"}
_PHONE_KEYS = {"phone", "mobile"}
_MAYBE_PERSONAL = re.compile(r"[\d@]")  # \d as the card and phone patterns: any script's digits
# Fields the logging itself writes (never a customer's words): passed through without looking.
_OURS = {"timestamp", "level", "trace_id", "span_id", "service", "logger", "duration_ms", "partition", "offset"}
# Identifiers are not personal data, and on-call needs them whole: an order id with a long digit run must not
# read as a phone or card number (ids are validated on entry: no free text reaches them).
_ID_KEYS = {"order_id", "event_id", "causation_id", "sku", "topic", "original", "id"}


def mask_email(value: str) -> str:
    return _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", value)


def mask_phone(value: str) -> str:
    digits = re.sub(r"\D", "", value)
    return f"***{digits[-4:]}" if len(digits) >= 4 else "***"


def _mask_text(text: str) -> str:
    if _MAYBE_PERSONAL.search(text) is None:
        return text  # no digit and no "@": no card, phone or e-mail in it (most log text; checked in C)
    text = redact_card_numbers(text)  # any separator (spaces, dashes, dots), anywhere in the text
    text = mask_email(text)
    return _PHONE.sub(lambda m: f"***{m.group(1)}", text)


def mask_value(value: Any, key: str = "") -> Any:
    """Mask personal data in any JSON-like value (dead letters, operator output), by field name and by content."""
    return _mask(key, value)


def _mask(key: str, value: Any) -> Any:
    k = key.lower()
    if k in _OURS:
        return value
    if isinstance(value, dict):
        return {kk: _mask(str(kk), vv) for kk, vv in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(key, v) for v in value]
    if not isinstance(value, str):
        return value
    if k in _ID_KEYS:
        return redact_card_numbers(value)  # whole, unless someone sent a card number as an id
    if k in _SECRET_KEYS:
        return "[redacted]"
    if k in _NAME_KEYS:
        return value[:1] + "***" if value else value
    if k in _PHONE_KEYS:
        return mask_phone(value)
    return _mask_text(value)


def mask_personal_data(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask every value of the event (keys keep their names)."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _mask(key, value)
    return event_dict


def add_trace_ids(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict


def _json(obj: Any, **_: Any) -> str:
    """orjson: a log line per handled event is on the hot path (the standard json was ~5 % of a service's CPU)."""
    return orjson.dumps(obj, default=str).decode()


def configure(settings: ServiceSettings) -> None:
    as_json = settings.log_format == "json" or (settings.log_format == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
        structlog.processors.format_exc_info,
        mask_personal_data,  # last before rendering: nothing added later escapes it
    ]
    renderer: Any = structlog.processors.JSONRenderer(serializer=_json) if as_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(settings.log_level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=settings.service_name)
    # Libraries log through the standard library: same JSON (or console) lines, same masking, WARNING and up.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
