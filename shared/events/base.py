"""The envelope every event shares, and the value types the contracts are made of.

Contracts are frozen pydantic models. Changes are additive: a new optional field bumps nothing for old readers
(unknown fields are ignored). A new event type reaches consumers first: a consumer dead-letters a type it does not
know (never drops it), so it can be redriven after the upgrade. A breaking change needs a new ``schema_version``.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
)

SCHEMA_VERSION = 1

OrderId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[
    AwareDatetime,
    AfterValidator(_utc),
    PlainSerializer(lambda v: v.isoformat().replace("+00:00", "Z"), return_type=str),
]


MONEY_MAX = Decimal("1000000000")  # no amount this system handles is near a billion; beyond it is an error
_MONEY_TEXT = re.compile(r"-?[0-9]{1,13}(\.[0-9]{1,2})?")


def _money_from_text(value: Any) -> Any:
    # Money is never a float: JSON numbers are refused so 0.1 + 0.2 can never reach the ledger. Text is plain
    # digits: no exponent ("1E+30" is a typo or an attack, and "1E+999999" overflows arithmetic), no NaN, no "_".
    if isinstance(value, float | int) and not isinstance(value, bool):
        raise ValueError('money must be a decimal string such as "39.90", not a JSON number')
    if isinstance(value, str):
        text = value.strip()
        if not _MONEY_TEXT.fullmatch(text):
            raise ValueError('money must be plain digits with at most 2 decimal places, such as "39.90"')
        return Decimal(text)
    return value


def _two_places(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError("money must be a finite decimal")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        raise ValueError("money has at most 2 decimal places")
    if abs(value) >= MONEY_MAX:
        raise ValueError(f"money must be below {MONEY_MAX}")
    return value


Money = Annotated[
    Decimal,
    BeforeValidator(_money_from_text),
    AfterValidator(_two_places),
    PlainSerializer(lambda v: format(v, "f"), return_type=str),
]
PositiveMoney = Annotated[Money, Field(gt=0)]


def now() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> uuid.UUID:
    return uuid.uuid4()


class Contract(BaseModel):
    """Base of every contract model: immutable, and tolerant of fields added by newer writers."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)


class Event(Contract):
    """The envelope: what every event on every topic carries."""

    event_type: str
    event_id: uuid.UUID
    order_id: OrderId
    occurred_at: UtcDatetime


class EmittedEvent(Event):
    """An event a service emits: it also names the event it reacts to and its schema version."""

    schema_version: int = SCHEMA_VERSION
    causation_id: uuid.UUID | None = None

    @classmethod
    def caused_by(cls, cause: Event, **fields: Any) -> Any:
        """Build this event as a reaction to ``cause`` (same order, causation chain kept)."""
        return cls(
            event_id=new_event_id(),
            order_id=cause.order_id,
            occurred_at=now(),
            causation_id=cause.event_id,
            **fields,
        )


def timer_cause(event_type: str, *, order_id: str, firing: str, at: datetime | None = None) -> Event:
    """The cause of a step a timer started (no Kafka event behind it). Its id is fixed by ``firing`` -- what makes
    this firing the one it is -- so a repeated firing is recognised by the inbox and republishes what it emitted."""
    return Event(
        event_type=event_type,
        event_id=uuid.uuid5(uuid.NAMESPACE_URL, firing),
        order_id=order_id,
        occurred_at=at or now(),
    )
