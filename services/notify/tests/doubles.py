"""Mailers for notify's tests: the real SMTP mailer held up where a test needs it, and one that only records."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from services.notify.domain import Mail
from services.notify.mailer import SENDERS, Bounced, SmtpMailer


class HeldMailer(SmtpMailer):
    """The real mailer whose worker thread stops before it takes a connection to the server, until ``go`` is set
    (``reached`` says a thread got there)."""

    def __init__(self, host: str, port: int, *, senders: int = SENDERS) -> None:
        super().__init__(
            host=host, port=port, sender="shop@example.com", starttls=False, username="", password="", senders=senders
        )
        self.reached, self.go = threading.Event(), threading.Event()

    def _take(self, *args: Any, **kwargs: Any) -> Any:
        self.reached.set()
        self.go.wait(10)
        return super()._take(*args, **kwargs)


class RecordingMailer(SmtpMailer):
    """The mailer with its SMTP conversation replaced by a list: every mail handed over is kept, and a recipient in
    ``bounce`` is refused for good, as a server's 5xx is. Worker slots are the real mailer's."""

    def __init__(self, *, bounce: frozenset[str] = frozenset()) -> None:
        super().__init__(host="127.0.0.1", port=0, sender="shop@example.com", starttls=False, username="", password="")
        self.bounce = bounce
        self.sent: list[tuple[str, Mail]] = []  # (order id, mail)

    async def send(self, mail: Mail, *, order_id: str, start_by: datetime | None = None) -> None:
        if mail.to in self.bounce:
            raise Bounced("SMTP 550")
        self.sent.append((order_id, mail))
