"""Notify service composition root."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import SecretStr, model_validator

from services.notify.domain import Contact
from services.notify.handlers import Deps, Mails, handlers
from services.notify.mailer import SmtpMailer
from services.notify.store import ContactStore
from shared import topics
from shared.runtime import Service, build_http_app
from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "notify"
    http_port: int = 8084
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_from: str = "orders@shop.example"
    smtp_starttls: bool = False  # STARTTLS on a plain connection (port 587)
    smtp_tls: bool = False  # TLS from the first byte (SMTPS, port 465)
    smtp_ca_file: str | None = None  # the CA that signed the server's certificate (None: the system's CAs)
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")

    @model_validator(mode="after")
    def _one_kind_of_tls(self) -> Settings:
        if self.smtp_starttls and self.smtp_tls:
            raise ValueError("SMTP_STARTTLS and SMTP_TLS exclude each other: STARTTLS upgrades a plain connection")
        return self

    def transport_problems(self) -> list[str]:
        """The shared transport rules, and mail: production refuses to hand customers' mail over in plaintext."""
        problems = super().transport_problems()
        if not (self.smtp_starttls or self.smtp_tls):
            problems.append("SMTP must be encrypted: set SMTP_STARTTLS=true (or SMTP_TLS=true for SMTPS)")
        return problems


def create_service(settings: Settings | None = None) -> Service:
    settings = settings or Settings()
    service = Service.create(settings, inputs=topics.CONSUMER_GROUPS["notify"], registry=handlers)
    store = ContactStore(service.db, "contacts", Contact)
    mailer = SmtpMailer(
        host=settings.smtp_host,
        port=settings.smtp_port,
        sender=settings.smtp_from,
        starttls=settings.smtp_starttls,
        tls=settings.smtp_tls,
        ca_file=settings.smtp_ca_file,
        username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value(),
    )
    mails = Mails(mailer)
    deps = Deps(contacts=service.unit_of_work(store, out_topic=topics.NOTIFY_EVENTS, effects=mails), mails=mails)
    service.wire_consumer(deps)
    return service


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_http_app(create_service(settings), title="notify")
