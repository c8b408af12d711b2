"""Composition root: keys, the providers, the notifier, the control API and the cashier in one ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from . import alipay, cashier, control, wechatpay
from .core import BillPlants, Context, DropConnection, Faults, Provider, now
from .keys import load_or_create, write_env
from .notifier import Notifier

log = logging.getLogger("provider_sim")
SWEEP_SECONDS = 0.5  # how often unpaid trades past their expiry are closed


@dataclass(frozen=True)
class Settings:
    state: Path
    host: str = "127.0.0.1"
    port: int = 8070
    public_url: str | None = None  # in replies (QR, H5 and bill URLs); None: the URL the caller used
    time_scale: float = 0.01  # multiplies the providers' retry delays and the refund settling time
    control_allow: Sequence[control.Network] = control.LOOPBACK
    wechatpay_cert_serial_no: str | None = None
    wechatpay_public_key_id: str | None = None

    @property
    def env_url(self) -> str:
        """The URL written into providers.env."""
        return (self.public_url or f"http://127.0.0.1:{self.port}").rstrip("/")


def create_app(settings: Settings) -> DropConnection:
    keys = load_or_create(
        settings.state, serial_no=settings.wechatpay_cert_serial_no, public_key_id=settings.wechatpay_public_key_id
    )
    env_file = write_env(keys, settings.env_url)
    log.info("keys in %s, payment-service settings in %s", settings.state, env_file)
    notifier, faults, plants = Notifier(time_scale=settings.time_scale), Faults(), BillPlants()
    public_url = settings.public_url.rstrip("/") if settings.public_url else None
    context = Context(keys, notifier, faults, plants, public_url)
    alipay_sim, wechatpay_sim = alipay.AlipaySim(context), wechatpay.WechatPaySim(context)
    providers: dict[str, Provider] = {alipay.NAME: alipay_sim, wechatpay.NAME: wechatpay_sim}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def sweep() -> None:
            while True:
                await asyncio.sleep(SWEEP_SECONDS)
                for provider in providers.values():
                    provider.sweep(now())

        sweeper = asyncio.create_task(sweep())
        try:
            yield
        finally:
            sweeper.cancel()
            await notifier.close()

    app = FastAPI(title="provider-sim", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> dict[str, object]:
        return {"status": "ok", "providers": sorted(providers)}

    def operation_name(provider: str, operation: str) -> str:
        return alipay.operation_name(operation) if provider == alipay.NAME else operation

    app.include_router(alipay_sim.router())
    app.include_router(wechatpay_sim.router())
    app.include_router(cashier.router(providers))
    app.include_router(
        control.router(
            providers, faults, notifier, plants, allowed=settings.control_allow, operation_name=operation_name
        )
    )
    return DropConnection(app)


def run(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # h11: DropConnection reaches the connection's transport through it (see core.DropConnection).
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, http="h11", log_level="info")
