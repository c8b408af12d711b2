"""Inventory HTTP API: stock levels, and adjustments as an ERP sync sends them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, Field, StrictInt, model_validator

from services.inventory.store import StockLevel, StockStore
from shared.keys import OperatorDep

SkuPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class StockAdjustment(BaseModel):
    """Exactly one of: ``available`` (units for sale, an ERP adjustment) or ``on_hand`` (units in the warehouse,
    held ones included: what seeding sets, so re-seeding never adds the units open orders hold)."""

    model_config = {"extra": "forbid"}

    available: StrictInt | None = Field(default=None, ge=0, le=10_000_000, description="units available for sale")
    on_hand: StrictInt | None = Field(default=None, ge=0, le=10_000_000, description="units in the warehouse")

    @model_validator(mode="after")
    def _exactly_one(self) -> StockAdjustment:
        if (self.available is None) == (self.on_hand is None):
            raise ValueError("give exactly one of available, on_hand")
        return self


def stock_router(stock: StockStore) -> APIRouter:
    router = APIRouter(tags=["stock"])

    @router.get("/stock/{sku}")
    async def get_stock(sku: SkuPath) -> StockLevel:
        level = await stock.get(sku=sku)
        if level is None:
            raise HTTPException(status_code=404, detail=f"unknown sku {sku}")
        return level

    @router.get("/stock/{sku}/holds")
    async def get_holds(sku: SkuPath, _: OperatorDep) -> dict[str, int]:
        """Units held per order (operators only: order ids are not for the storefronts)."""
        holds = await stock.holds(sku=sku)
        if holds is None:
            raise HTTPException(status_code=404, detail=f"unknown sku {sku}")
        return holds

    @router.put("/stock/{sku}")
    async def put_stock(sku: SkuPath, body: StockAdjustment, _: OperatorDep) -> StockLevel:
        """Set a SKU's stock (operators only: an ERP sync or ``fulfil stock seed``)."""
        if body.on_hand is not None:
            return await stock.set_on_hand(sku=sku, on_hand=body.on_hand)
        assert body.available is not None
        return await stock.set_available(sku=sku, available=body.available)

    return router
