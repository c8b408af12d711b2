"""Shipping persistence: one document per order in ``shipments`` (state + outbox + inbox)."""

from __future__ import annotations

from services.shipping.domain import Shipment
from shared.mongo import AggregateStore


class ShipmentStore(AggregateStore[Shipment]):
    pass
