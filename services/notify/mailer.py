"""Sending e-mail over SMTP (the local sink, Mailpit, or a real relay)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import smtplib
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import TYPE_CHECKING

from services.notify import domain
from services.notify.domain import Mail
from shared import telemetry
from shared.consumer import Outage, TransientError

if TYPE_CHECKING:
    from typing_extensions import Buffer


class Bounced(Exception):
    """The server refused the recipient for good (5xx): recorded as a failed notification, not retried."""


class TooLate(Exception):
    """The send could not start by its ``start_by`` (it waited too long for its turn): nothing was handed to the
    server. Its claim must be renewed before it may start."""


class CutOff(OSError):
    """A send stopped at its deadline, or because its caller went away, before its next write to the server."""


SENDERS = 16  # sends at once, each on a worker thread of its own
REMEMBERED = 10_000  # Message-IDs of mails handed over, so that a retry of this process does not send one again

_HOLDING: ContextVar[frozenset[int]] = ContextVar("smtp_slots_held", default=frozenset())


class _Session(smtplib.SMTP):
    """An SMTP connection that writes nothing after ``deadline`` (or once ``abort`` is set) and waits for the server
    at most until then: a send cut off before the end of its DATA leaves the server nothing to deliver."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        deadline: float,
        abort: threading.Event | None,
        implicit_tls: ssl.SSLContext | None,
    ) -> None:
        self.deadline, self.abort, self.implicit_tls = deadline, abort, implicit_tls
        try:
            super().__init__(host, port, timeout=self._left())  # connects, and reads the greeting
        except BaseException:
            self.close()
            raise

    def _left(self) -> float:
        """Seconds the next operation may take (at most ``SMTP_TIMEOUT``); raises if none are left."""
        if self.abort is not None and self.abort.is_set():
            raise CutOff("the send was cancelled")
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CutOff(f"the send ran out of its {domain.SEND_TIMEOUT.total_seconds():g} s")
        return min(left, domain.SMTP_TIMEOUT.total_seconds())

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        if self.implicit_tls is not None:  # SMTPS (port 465): TLS from the first byte
            return self.implicit_tls.wrap_socket(sock, server_hostname=self._host)  # type: ignore[attr-defined]
        return sock

    def send(self, s: Buffer | str) -> None:
        left = self._left()
        if self.sock:
            self.sock.settimeout(left)  # sendall: the whole write within what is left
        super().send(s)

    def getreply(self) -> tuple[int, bytes]:
        left = self._left()
        if self.sock:
            self.sock.settimeout(left)
        return super().getreply()

    def unbounded(self) -> None:
        """Back in the pool: no deadline until the next send takes it."""
        self.deadline, self.abort = math.inf, None


class SmtpMailer:
    """Hands mails to an SMTP server over kept connections, each send bounded in time.

    A connection is kept open after a mail (at most ``KEEP`` idle ones, each for ``IDLE_FOR``): opening one per mail
    -- connect, EHLO, STARTTLS and login, QUIT -- cost this service and the server more round trips and CPU than
    the mail itself (measured in docs/performance.md: notify 8.6 -> 8.0, the sink 3.8 -> 2.7 ms per order). A kept
    connection is checked with NOOP before it carries a mail, and any error closes it rather than returning it, so a
    mail is never handed to a connection in an unknown state.

    Sends run on ``SENDERS`` worker threads of the mailer's own, and a task takes one (:meth:`slot`) before it
    claims a mail, so a claim never waits in a queue for a thread. A send starts only by the ``start_by`` its claim
    allows and writes nothing to the server after ``SEND_TIMEOUT``; a cancelled send writes nothing more either.
    STARTTLS and implicit TLS verify the server's certificate and name (``ca_file``, else the system's CAs).
    """

    KEEP = 8
    IDLE_FOR = 10.0  # seconds; servers drop idle clients after 30 s or more

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        starttls: bool,
        username: str,
        password: str,
        tls: bool = False,
        ca_file: str | None = None,
        senders: int = SENDERS,
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.starttls, self.tls, self.username, self.password = starttls, tls, username, password
        # Verifies the certificate chain and the host name; built now, so a CA file that cannot be read stops start-up.
        self.tls_context = ssl.create_default_context(cafile=ca_file) if starttls or tls else None
        self._idle: list[tuple[_Session, float]] = []
        self._lock = threading.Lock()
        self._handed_over: OrderedDict[str, None] = OrderedDict()
        self._workers = ThreadPoolExecutor(max_workers=senders, thread_name_prefix="smtp")
        self._slots = asyncio.Semaphore(senders)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """A worker thread for this task's sends, held until the block ends (a send inside takes no second one)."""
        held = _HOLDING.get()
        if id(self) in held:
            yield
            return
        async with self._slots:
            token = _HOLDING.set(held | {id(self)})
            try:
                yield
            finally:
                _HOLDING.reset(token)

    def _connect(self, deadline: float, abort: threading.Event) -> _Session:
        smtp = _Session(
            self.host,
            self.port,
            deadline=deadline,
            abort=abort,
            implicit_tls=self.tls_context if self.tls else None,
        )
        try:
            if self.starttls:
                smtp.starttls(context=self.tls_context)
            if self.username:
                smtp.login(self.username, self.password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _take(self, deadline: float, abort: threading.Event) -> _Session:
        """A kept connection that still answers, else a new one."""
        while True:
            with self._lock:
                kept = self._idle.pop() if self._idle else None
            if kept is None:
                return self._connect(deadline, abort)
            smtp, since = kept
            smtp.deadline, smtp.abort = deadline, abort
            if time.monotonic() - since < self.IDLE_FOR:
                try:
                    if smtp.noop()[0] == 250:
                        return smtp
                except CutOff:
                    smtp.close()
                    raise
                except (smtplib.SMTPException, OSError):
                    pass
            smtp.close()

    def _keep(self, smtp: _Session) -> None:
        smtp.unbounded()
        with self._lock:
            if len(self._idle) < self.KEEP:
                self._idle.append((smtp, time.monotonic()))
                return
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()
        smtp.close()

    def _was_handed_over(self, message_id: str) -> bool:
        with self._lock:
            return message_id in self._handed_over

    def _remember(self, message_id: str) -> None:
        with self._lock:
            self._handed_over[message_id] = None
            while len(self._handed_over) > REMEMBERED:
                self._handed_over.popitem(last=False)

    def _send_blocking(self, mail: Mail, start_by: datetime | None, abort: threading.Event) -> None:
        """On a worker thread: hand ``mail`` over unless it is too late to start, or was handed over already."""
        if abort.is_set():
            return  # nobody waits for this send any more
        if start_by is not None and time.time() > start_by.timestamp():  # wall clock, as the lease's end
            raise TooLate(f"the send could not start by {start_by.isoformat()}")
        if self._was_handed_over(mail.message_id):
            return  # this process handed it over and its SENT mark was lost: the Message-ID is the idempotency key
        deadline = time.monotonic() + domain.SEND_TIMEOUT.total_seconds()
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = mail.to
        msg["Subject"] = mail.subject
        msg["Message-ID"] = mail.message_id
        msg["Date"] = formatdate(usegmt=True)
        msg.set_content(mail.body)
        smtp = self._take(deadline, abort)
        try:
            smtp.send_message(msg)
        except BaseException:
            smtp.close()
            raise
        self._remember(mail.message_id)
        self._keep(smtp)

    async def send(self, mail: Mail, *, order_id: str, start_by: datetime | None = None) -> None:
        """Hand ``mail`` over; raises :class:`TooLate` if it cannot start by ``start_by`` (None: no limit)."""
        with telemetry.tracer().start_as_current_span(
            "smtp send",
            kind=telemetry.SpanKind.CLIENT,
            attributes={"order.id": order_id, "server.address": self.host, "server.port": self.port},
        ):
            async with self.slot():
                abort = threading.Event()
                loop = asyncio.get_running_loop()
                try:
                    await loop.run_in_executor(self._workers, self._send_blocking, mail, start_by, abort)
                except asyncio.CancelledError:
                    abort.set()  # a send not yet started never starts, one under way writes nothing more
                    raise
                except smtplib.SMTPRecipientsRefused as e:
                    codes = [code for code, _ in e.recipients.values()]
                    if all(c >= 500 for c in codes):
                        raise Bounced(f"recipient refused ({codes[0]})") from None
                    raise TransientError(f"recipient temporarily refused ({codes})") from None
                except smtplib.SMTPResponseException as e:
                    if e.smtp_code >= 500:
                        raise Bounced(f"SMTP {e.smtp_code}") from None
                    raise TransientError(f"SMTP {e.smtp_code}") from None
                except CutOff as e:
                    raise TransientError(f"SMTP send cut off: {e}") from None
                except (ssl.SSLError, smtplib.SMTPNotSupportedError) as e:
                    # An unverifiable certificate, a server without STARTTLS: ours to fix, not the message's fault.
                    raise Outage(f"SMTP TLS failed: {type(e).__name__}: {e}") from None
                except (ConnectionError, smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError) as e:
                    raise Outage(f"SMTP server unreachable: {type(e).__name__}") from None
                except (OSError, smtplib.SMTPException) as e:
                    raise TransientError(f"SMTP failed: {type(e).__name__}") from None
