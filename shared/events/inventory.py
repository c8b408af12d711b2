"""Events the inventory service writes to ``inventory.events``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.events.base import Contract, EmittedEvent
from shared.events.storefront import Sku


class StockLine(Contract):
    sku: Sku
    quantity: int = Field(ge=1)


class StockReserved(EmittedEvent):
    event_type: Literal["StockReserved"] = "StockReserved"
    lines: list[StockLine]


class StockUnavailable(EmittedEvent):
    event_type: Literal["StockUnavailable"] = "StockUnavailable"
    skus: list[Sku]


class StockReleased(EmittedEvent):
    event_type: Literal["StockReleased"] = "StockReleased"
    lines: list[StockLine]


InventoryEvent = StockReserved | StockUnavailable | StockReleased
