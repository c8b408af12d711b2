"""Sending e-mail over SMTP (the local sink, Mailpit, or a real relay)."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from email.utils import formatdate

from services.notify.domain import SMTP_TIMEOUT, Mail
from shared import telemetry
from shared.consumer import Outage, TransientError


class Bounced(Exception):
    """The server refused the recipient for good (5xx): recorded as a failed notification, not retried."""


class SmtpMailer:
    def __init__(self, *, host: str, port: int, sender: str, starttls: bool, username: str, password: str) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.starttls, self.username, self.password = starttls, username, password

    def _send_blocking(self, mail: Mail) -> None:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = mail.to
        msg["Subject"] = mail.subject
        msg["Message-ID"] = mail.message_id
        msg["Date"] = formatdate(usegmt=True)
        msg.set_content(mail.body)
        with smtplib.SMTP(self.host, self.port, timeout=SMTP_TIMEOUT.total_seconds()) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password)
            smtp.send_message(msg)

    async def send(self, mail: Mail, *, order_id: str) -> None:
        with telemetry.tracer().start_as_current_span(
            "smtp send",
            kind=telemetry.SpanKind.CLIENT,
            attributes={"order.id": order_id, "server.address": self.host, "server.port": self.port},
        ):
            try:
                await asyncio.to_thread(self._send_blocking, mail)
            except smtplib.SMTPRecipientsRefused as e:
                codes = [code for code, _ in e.recipients.values()]
                if all(c >= 500 for c in codes):
                    raise Bounced(f"recipient refused ({codes[0]})") from None
                raise TransientError(f"recipient temporarily refused ({codes})") from None
            except smtplib.SMTPResponseException as e:
                if e.smtp_code >= 500:
                    raise Bounced(f"SMTP {e.smtp_code}") from None
                raise TransientError(f"SMTP {e.smtp_code}") from None
            except (ConnectionError, smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError) as e:
                raise Outage(f"SMTP server unreachable: {type(e).__name__}") from None
            except (OSError, smtplib.SMTPException) as e:
                raise TransientError(f"SMTP failed: {type(e).__name__}") from None
