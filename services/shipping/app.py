"""Shipping service composition root: settings, carriers, handlers, the push endpoints."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import FastAPI
from pydantic import Field, model_validator

from services.shipping import domain
from services.shipping.api import NOTIFY_PATHS, shipping_router
from services.shipping.carrier import Carrier, SandboxCarrier, Sender
from services.shipping.domain import Shipment
from services.shipping.handlers import TRACK, CarrierCalls, Deps, handlers, shipment_timers, track_at_carrier
from services.shipping.jd import JDLogistics
from services.shipping.sf import SFExpress
from services.shipping.store import ShipmentStore
from shared import topics
from shared.events.shipping import CarrierCode
from shared.runtime import Service, build_http_app
from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    """Carrier credentials come from the environment, secrets from files read at start. Locally the provider
    simulator writes them (``.local/providers/providers.env``); going live is setting them to the shop's own."""

    service_name: str = "shipping"
    http_port: int = 8083
    # Which carrier takes each delivery option, and per region (postal-code prefix): see services/shipping/domain.py
    shipping_carriers: str = domain.DEFAULT_CARRIERS
    shipping_track_interval_seconds: float = Field(default=60.0, gt=0)  # route query when pushes are quiet
    carrier_timeout_seconds: float = Field(default=10.0, gt=0)
    carrier_max_in_flight: int = Field(default=16, ge=1, le=256)  # calls at once per carrier; the rest queue
    shipping_sender_name: str = Sender().name
    shipping_sender_phone: str = Sender().phone
    shipping_sender_province: str = Sender().province
    shipping_sender_city: str = Sender().city
    shipping_sender_address: str = Sender().address
    shipping_sender_postal_code: str = Sender().postal_code
    # SF and JD need a number for the recipient. An order without customer.phone is booked with the shop's service
    # line (SHIPPING_SENDER_PHONE) in its place, so the courier calls the shop; "refuse" fails such a shipment before
    # booking (the order is cancelled and refunded).
    shipping_recipient_phone_fallback: Literal["service_line", "refuse"] = "service_line"

    sf_api_url: str = "https://bspgw.sf-express.com"
    sf_partner_id: str = ""
    sf_checkword_file: str = ""
    sf_monthly_card: str = ""

    jd_api_url: str = "https://api.jdl.com"
    jd_app_key: str = ""
    jd_app_secret_file: str = ""
    jd_access_token: str = ""
    jd_refresh_token_file: str = ""
    jd_customer_code: str = ""

    provider_sim_url: str = ""  # set by the local simulator's configuration; production refuses it

    @property
    def carrier_rules(self) -> dict[str, Any]:
        return domain.parse_carriers(self.shipping_carriers)

    @property
    def configured(self) -> set[str]:
        return {code for code, on in (("sf", self.sf_partner_id), ("jd", self.jd_app_key)) if on}

    @model_validator(mode="after")
    def _check_carriers(self) -> Settings:
        rules = self.carrier_rules  # raises on a malformed SHIPPING_CARRIERS
        if self.environment != "production":
            return self
        problems = []
        if self.provider_sim_url:
            problems.append("PROVIDER_SIM_URL is set: the carrier simulator is refused")
        if missing := sorted(set(rules.values()) - self.configured):
            problems.append(f"SHIPPING_CARRIERS names {', '.join(missing)} without credentials (SF_* / JD_*)")
        for name, url, code in (("SF_API_URL", self.sf_api_url, "sf"), ("JD_API_URL", self.jd_api_url, "jd")):
            parts = urlsplit(url)
            if code in self.configured and (parts.scheme != "https" or parts.hostname in ("127.0.0.1", "localhost")):
                problems.append(f"{name} must be an https:// address of the carrier")
        if problems:
            raise ValueError("; ".join(problems) + " when ENVIRONMENT=production")
        return self


def build_carriers(settings: Settings, service: Service) -> dict[str, Carrier]:
    """The carriers this service has credentials for; outside production a carrier without them is the in-process
    sandbox (the store tests' carrier), never in production (refused by the settings)."""
    sender = Sender(
        name=settings.shipping_sender_name,
        phone=settings.shipping_sender_phone,
        province=settings.shipping_sender_province,
        city=settings.shipping_sender_city,
        address=settings.shipping_sender_address,
        postal_code=settings.shipping_sender_postal_code,
    )
    carriers: dict[str, Carrier] = {}
    if settings.sf_partner_id:
        carriers["sf"] = SFExpress(
            api_url=settings.sf_api_url,
            partner_id=settings.sf_partner_id,
            checkword=Path(settings.sf_checkword_file).read_text().strip(),
            monthly_card=settings.sf_monthly_card,
            sender=sender,
            timeout=settings.carrier_timeout_seconds,
            max_in_flight=settings.carrier_max_in_flight,
        )
    if settings.jd_app_key:
        carriers["jd"] = JDLogistics(
            api_url=settings.jd_api_url,
            app_key=settings.jd_app_key,
            app_secret=Path(settings.jd_app_secret_file).read_text().strip(),
            access_token=settings.jd_access_token,
            refresh_token=Path(settings.jd_refresh_token_file).read_text().strip(),
            customer_code=settings.jd_customer_code,
            sender=sender,
            timeout=settings.carrier_timeout_seconds,
            max_in_flight=settings.carrier_max_in_flight,
        )
    codes: tuple[CarrierCode, ...] = ("sf", "jd")
    for code in codes:
        if code not in carriers:
            carriers[code] = SandboxCarrier(code, service.db)
    return carriers


def create_service(settings: Settings | None = None) -> Service:
    settings = settings or Settings()
    service = Service.create(settings, inputs=topics.CONSUMER_GROUPS["shipping"], registry=handlers)
    store = ShipmentStore(service.db, "shipments", Shipment)
    carriers = build_carriers(settings, service)
    calls = CarrierCalls(
        carriers,
        rules=settings.carrier_rules,
        track_interval=timedelta(seconds=settings.shipping_track_interval_seconds),
        phone_fallback=settings.shipping_sender_phone
        if settings.shipping_recipient_phone_fallback == "service_line"
        else "",
    )
    shipments = service.unit_of_work(store, out_topic=topics.SHIPPING_EVENTS, effects=calls, timers_of=shipment_timers)
    deps = Deps(shipments=shipments, store=store, calls=calls, timers=service.timers)
    service.wire_consumer(deps)
    assert service.timers is not None
    service.background.append(service.timers.scanner(TRACK, lambda key: track_at_carrier(key, deps)))
    service.routers.append(shipping_router(service, carriers))
    service.open_paths.update(NOTIFY_PATHS.values())
    return service


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_http_app(create_service(settings), title="shipping")
