"""Composition root: keys, the providers, the carriers, the notifier and the pusher, the control API and the
cashier in one ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from . import alipay, cashier, control, jd, sf, wechatpay
from .clock import now
from .core import BillPlants, Context, DropConnection, Faults, Provider
from .keys import load_or_create, write_env
from .notifier import Notifier
from .parcels import Parcels, Pusher

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
    jd_access_token: str | None = None  # fixes JD's initial access token (docker-compose)
    parcel_time_scale: float = 1.0  # multiplies the parcels' schedule (2 s .. 10 s) and the push retry delays
    sf_push_url: str | None = None  # the account's registered route-push URL; None: SF pushes nothing
    jd_push_url: str | None = None

    @property
    def env_url(self) -> str:
        """The URL written into providers.env."""
        return (self.public_url or f"http://127.0.0.1:{self.port}").rstrip("/")


def create_app(settings: Settings) -> DropConnection:
    keys = load_or_create(
        settings.state,
        serial_no=settings.wechatpay_cert_serial_no,
        public_key_id=settings.wechatpay_public_key_id,
        jd_access_token=settings.jd_access_token,
    )
    env_file = write_env(keys, settings.env_url)
    log.info("keys in %s, payment- and shipping-service settings in %s", settings.state, env_file)
    notifier, faults, plants = Notifier(time_scale=settings.time_scale), Faults(), BillPlants()
    public_url = settings.public_url.rstrip("/") if settings.public_url else None
    context = Context(keys, notifier, faults, plants, public_url)
    alipay_sim, wechatpay_sim = alipay.AlipaySim(context), wechatpay.WechatPaySim(context)
    providers: dict[str, Provider] = {alipay.NAME: alipay_sim, wechatpay.NAME: wechatpay_sim}
    pusher = Pusher(time_scale=settings.parcel_time_scale)
    scale = settings.parcel_time_scale
    sf_sim = sf.SfSim(context, pusher=pusher, time_scale=scale, push_url=settings.sf_push_url)
    jd_sim = jd.JdSim(context, pusher=pusher, time_scale=scale, push_url=settings.jd_push_url)
    carriers: dict[str, Parcels] = {sf.NAME: sf_sim.parcels, jd.NAME: jd_sim.parcels}

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
            for parcels in carriers.values():
                parcels.close()
            await notifier.close()
            await pusher.close()

    app = FastAPI(title="provider-sim", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> dict[str, object]:
        return {"status": "ok", "providers": sorted([*providers, *carriers]), "carriers": sorted(carriers)}

    names = {alipay.NAME: alipay.operation_name, sf.NAME: sf.operation_name, jd.NAME: jd.operation_name}

    def operation_name(provider: str, operation: str) -> str:
        return names[provider](operation) if provider in names else operation

    app.include_router(alipay_sim.router())
    app.include_router(wechatpay_sim.router())
    app.include_router(sf_sim.router())
    app.include_router(jd_sim.router())
    app.include_router(cashier.router(providers))
    app.include_router(
        control.router(
            providers,
            faults,
            notifier,
            plants,
            allowed=settings.control_allow,
            operation_name=operation_name,
            carriers=carriers,
            pusher=pusher,
            expire_jd_tokens=jd_sim.expire_tokens,
        )
    )
    return DropConnection(app)


def run(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # h11: DropConnection reaches the connection's transport through it (see core.DropConnection).
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, http="h11", log_level="info")
