"""Payment service composition root: settings, broker, store, gateway and providers, handlers, HTTP."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI
from pydantic import Field, model_validator

from services.payment.alipay import AlipayProvider
from services.payment.api import NOTIFY_PATHS, payment_router
from services.payment.domain import Payment
from services.payment.gateway import SandboxGateway
from services.payment.handlers import (
    CHECK,
    REVIEW,
    Deps,
    ProviderCalls,
    check_at_provider,
    finish_review,
    handlers,
    payment_timers,
)
from services.payment.provider import PaymentProvider
from services.payment.store import PaymentStore
from services.payment.wechatpay import WeChatPayProvider
from shared import topics
from shared.runtime import Service, build_http_app
from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    """Provider credentials come from the environment; the key files are read at start. Locally the simulator
    writes them (``.local/providers/providers.env``); going live is setting them to the merchant's own."""

    service_name: str = "payment"
    http_port: int = 8081
    payment_review_hold_seconds: float = Field(default=20.0, ge=0)
    # Which provider takes each payment method when the customer pays at a cashier (no token): method=provider pairs.
    payment_providers: str = "alipay=alipay,wechat_pay=wechatpay"
    payment_trade_expiry_seconds: float = Field(default=900.0, gt=0)
    payment_check_interval_seconds: float = Field(default=10.0, gt=0)
    # Where providers reach the notify endpoints (HTTPS in production): default this process's own address.
    payment_notify_base_url: str = ""
    provider_timeout_seconds: float = Field(default=10.0, gt=0)

    alipay_app_id: str = ""
    alipay_gateway_url: str = "https://openapi.alipay.com/gateway.do"
    alipay_app_private_key_file: str = ""
    alipay_public_key_file: str = ""

    wechatpay_mchid: str = ""
    wechatpay_appid: str = ""
    wechatpay_api_url: str = "https://api.mch.weixin.qq.com"
    wechatpay_private_key_file: str = ""
    wechatpay_cert_serial_no: str = ""
    wechatpay_apiv3_key_file: str = ""
    wechatpay_public_key_file: str = ""
    wechatpay_public_key_id: str = ""

    provider_sim_url: str = ""  # set by the local simulator's configuration; production refuses it

    @property
    def methods(self) -> dict[str, str]:
        """PAYMENT_PROVIDERS as a mapping of payment method to provider."""
        pairs = [p.split("=", 1) for p in self.payment_providers.split(",") if "=" in p]
        return {method.strip(): provider.strip() for method, provider in pairs}

    @property
    def notify_base_url(self) -> str:
        return (self.payment_notify_base_url or f"http://{self.http_host}:{self.http_port}").rstrip("/")

    def secret_files(self) -> dict[str, str]:
        return {
            "ALIPAY_APP_PRIVATE_KEY_FILE": self.alipay_app_private_key_file,
            "WECHATPAY_PRIVATE_KEY_FILE": self.wechatpay_private_key_file,
            "WECHATPAY_APIV3_KEY_FILE": self.wechatpay_apiv3_key_file,
        }

    @model_validator(mode="after")
    def _refuse_unsafe_providers(self) -> Settings:
        if self.environment != "production":
            return self
        problems = []
        if self.provider_sim_url:
            problems.append("PROVIDER_SIM_URL is set: the provider simulator is refused")
        urls = {"ALIPAY_GATEWAY_URL": self.alipay_gateway_url, "WECHATPAY_API_URL": self.wechatpay_api_url}
        urls["PAYMENT_NOTIFY_BASE_URL"] = self.notify_base_url
        for name, url in urls.items():
            parts = urlsplit(url)
            if parts.scheme != "https" or parts.hostname in ("127.0.0.1", "localhost", "::1"):
                problems.append(f"{name} must be an https:// address of the provider (or, for notify, of ours)")
        if not (self.alipay_app_id or self.wechatpay_mchid):
            problems.append("no payment provider is configured (ALIPAY_APP_ID or WECHATPAY_MCHID)")
        if problems:
            raise ValueError("; ".join(problems) + " when ENVIRONMENT=production")
        return self


def key_file_problems(settings: Settings) -> list[str]:
    """Private key files that are missing or readable by others than their owner (refused at start in production;
    checked when the service starts, where the files are read, not where the settings are parsed)."""
    problems = []
    for name, path in settings.secret_files().items():
        if not path:
            continue
        file = Path(path)
        if not file.is_file():
            problems.append(f"{name} names no file")
        elif file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            problems.append(f"{name} is readable by others than its owner (chmod 600)")
    return problems


def build_providers(settings: Settings) -> dict[str, PaymentProvider]:
    """The providers this service has credentials for (a method whose provider is missing is declined)."""
    providers: dict[str, PaymentProvider] = {}
    base = settings.notify_base_url
    if settings.alipay_app_id:
        providers["alipay"] = AlipayProvider(
            app_id=settings.alipay_app_id,
            gateway_url=settings.alipay_gateway_url,
            app_private_key=Path(settings.alipay_app_private_key_file).read_text(),
            alipay_public_key=Path(settings.alipay_public_key_file).read_text(),
            notify_url=base + NOTIFY_PATHS["alipay"],
            timeout=settings.provider_timeout_seconds,
        )
    if settings.wechatpay_mchid:
        providers["wechatpay"] = WeChatPayProvider(
            mchid=settings.wechatpay_mchid,
            appid=settings.wechatpay_appid,
            api_url=settings.wechatpay_api_url,
            private_key=Path(settings.wechatpay_private_key_file).read_text(),
            cert_serial_no=settings.wechatpay_cert_serial_no,
            apiv3_key=Path(settings.wechatpay_apiv3_key_file).read_text().strip(),
            public_key=Path(settings.wechatpay_public_key_file).read_text(),
            public_key_id=settings.wechatpay_public_key_id,
            notify_url=base + NOTIFY_PATHS["wechatpay"],
            timeout=settings.provider_timeout_seconds,
        )
    return providers


def create_service(settings: Settings | None = None) -> Service:
    settings = settings or Settings()
    service = Service.create(settings, inputs=topics.CONSUMER_GROUPS["payment"], registry=handlers)
    store = PaymentStore(service.db, "payments", Payment)
    gateway = SandboxGateway(service.db)
    if settings.environment == "production" and (problems := key_file_problems(settings)):
        raise ValueError("; ".join(problems) + " when ENVIRONMENT=production")
    providers = build_providers(settings)
    review_hold = timedelta(seconds=settings.payment_review_hold_seconds)
    check_interval = timedelta(seconds=settings.payment_check_interval_seconds)
    payments = service.unit_of_work(
        store,
        out_topic=topics.PAYMENT_EVENTS,
        effects=ProviderCalls(gateway, review_hold, providers=providers, check_interval=check_interval),
        timers_of=payment_timers,
    )
    assert service.timers is not None
    deps = Deps(
        payments=payments,
        store=store,
        timers=service.timers,
        gateway=gateway,
        review_hold=review_hold,
        providers=providers,
        methods=settings.methods,
        trade_expiry=timedelta(seconds=settings.payment_trade_expiry_seconds),
        check_interval=check_interval,
    )
    service.wire_consumer(deps)
    service.background.append(deps.timers.scanner(REVIEW, lambda key: finish_review(key, deps)))
    service.background.append(deps.timers.scanner(CHECK, lambda key: check_at_provider(key, deps)))
    service.routers.append(payment_router(service, store, providers))
    service.open_paths.update(NOTIFY_PATHS.values())
    return service


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_http_app(create_service(settings), title="payment")
