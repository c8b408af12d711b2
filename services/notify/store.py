"""Notify persistence: one document per order in ``contacts`` (who to write to, what was sent)."""

from __future__ import annotations

from services.notify.domain import Contact
from shared.mongo import AggregateStore


class ContactStore(AggregateStore[Contact]):
    pass
