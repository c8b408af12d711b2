"""Inventory HTTP API: stock levels, and adjustments as an ERP sync sends them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, Field

from services.inventory.store import StockLevel, StockStore

SkuPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class StockAdjustment(BaseModel):
    available: int = Field(ge=0, le=10_000_000, description="units available for sale")


def stock_router(stock: StockStore) -> APIRouter:
    router = APIRouter(tags=["stock"])

    @router.get("/stock/{sku}")
    async def get_stock(sku: SkuPath) -> StockLevel:
        level = await stock.get(sku=sku)
        if level is None:
            raise HTTPException(status_code=404, detail=f"unknown sku {sku}")
        return level

    @router.put("/stock/{sku}")
    async def put_stock(sku: SkuPath, body: StockAdjustment) -> StockLevel:
        return await stock.set_available(sku=sku, available=body.available)

    return router
