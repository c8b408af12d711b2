"""Notify service composition root."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import SecretStr

from services.notify.domain import Contact
from services.notify.handlers import Deps, Mails, handlers
from services.notify.mailer import SmtpMailer
from services.notify.store import ContactStore
from shared import topics
from shared.service import Service, build_http_app
from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "notify"
    http_port: int = 8084
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_from: str = "orders@shop.example"
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")


def create_service(settings: Settings | None = None) -> Service:
    settings = settings or Settings()
    service = Service.create(settings, inputs=topics.CONSUMER_GROUPS["notify"], registry=handlers)
    store = ContactStore(service.db, "contacts", Contact)
    mailer = SmtpMailer(
        host=settings.smtp_host,
        port=settings.smtp_port,
        sender=settings.smtp_from,
        starttls=settings.smtp_starttls,
        username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value(),
    )
    deps = Deps(
        contacts=service.aggregates(store, out_topic=topics.NOTIFY_EVENTS, effects=Mails(mailer)),
        mailer=mailer,
    )
    service.wire_consumer(deps)
    return service


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_http_app(create_service(settings), title="notify")
