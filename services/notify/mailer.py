"""Sending e-mail over SMTP (the local sink, Mailpit, or a real relay)."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import threading
import time
from email.message import EmailMessage
from email.utils import formatdate

from services.notify.domain import SMTP_TIMEOUT, Mail
from shared import telemetry
from shared.consumer import Outage, TransientError


class Bounced(Exception):
    """The server refused the recipient for good (5xx): recorded as a failed notification, not retried."""


class SmtpMailer:
    """Hands mails to an SMTP server over kept connections.

    A connection is kept open after a mail (at most ``KEEP`` idle ones, each for ``IDLE_FOR``): opening one per mail
    -- connect, EHLO, STARTTLS and login, QUIT -- cost this service and the server more round trips and CPU than
    the mail itself (measured in docs/performance.md: notify 8.6 -> 8.0, the sink 3.8 -> 2.7 ms per order). A kept
    connection is checked with NOOP before it carries a mail, and any error closes it rather than returning it, so a
    mail is never handed to a connection in an unknown state. (A connection carries one mail at a time: each send
    runs in a worker thread.)
    """

    KEEP = 8
    IDLE_FOR = 10.0  # seconds; servers drop idle clients after 30 s or more

    def __init__(self, *, host: str, port: int, sender: str, starttls: bool, username: str, password: str) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.starttls, self.username, self.password = starttls, username, password
        self._idle: list[tuple[smtplib.SMTP, float]] = []
        self._lock = threading.Lock()

    def _connect(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP(self.host, self.port, timeout=SMTP_TIMEOUT.total_seconds())
        try:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _take(self) -> smtplib.SMTP:
        """A kept connection that still answers, else a new one."""
        while True:
            with self._lock:
                kept = self._idle.pop() if self._idle else None
            if kept is None:
                return self._connect()
            smtp, since = kept
            if time.monotonic() - since < self.IDLE_FOR:
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    if smtp.noop()[0] == 250:
                        return smtp
            smtp.close()

    def _keep(self, smtp: smtplib.SMTP) -> None:
        with self._lock:
            if len(self._idle) < self.KEEP:
                self._idle.append((smtp, time.monotonic()))
                return
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()
        smtp.close()

    def _send_blocking(self, mail: Mail) -> None:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = mail.to
        msg["Subject"] = mail.subject
        msg["Message-ID"] = mail.message_id
        msg["Date"] = formatdate(usegmt=True)
        msg.set_content(mail.body)
        smtp = self._take()
        try:
            smtp.send_message(msg)
        except BaseException:
            smtp.close()
            raise
        self._keep(smtp)

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
