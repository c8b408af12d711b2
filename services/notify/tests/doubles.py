"""Mailers for notify's tests: the real SMTP mailer, with its worker thread held up where a test needs it."""

from __future__ import annotations

import threading
from typing import Any

from services.notify.mailer import SENDERS, SmtpMailer


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
