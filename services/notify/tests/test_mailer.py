"""The mailer against a real SMTP server (aiosmtpd, in this process, on a free loopback port).

It keeps its SMTP connections: mails share one connection, and one the server dropped is replaced before it carries
a mail. Each send is bounded: it does not start after its claim allows, is cut off at its deadline before the server
has the whole mail, stops when its caller is cancelled, and is not repeated for a Message-ID already handed over.
STARTTLS and implicit TLS verify the server's certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.notify import domain
from services.notify.domain import Mail
from services.notify.mailer import SmtpMailer, TooLate
from services.notify.tests.doubles import HeldMailer
from shared.consumer import Outage, TransientError


class Recorder:
    """Counts the sessions (EHLOs) and keeps the recipients of what the server accepted."""

    def __init__(self) -> None:
        self.ehlos = 0
        self.delivered: list[str] = []

    async def handle_EHLO(  # noqa: N802  (aiosmtpd's hook names)
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> Any:
        self.ehlos += 1
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.delivered.extend(envelope.rcpt_tos)
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return _free_port()


@pytest.fixture
def server(port: int) -> Iterator[tuple[Controller, Recorder]]:
    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    yield controller, recorder
    controller.stop()


def _mailer(port: int) -> SmtpMailer:
    return SmtpMailer(host="127.0.0.1", port=port, sender="shop@example.com", starttls=False, username="", password="")


def _mail(n: int) -> Mail:
    return Mail(to=f"buyer{n}@example.com", subject=f"Order {n}", body="Thank you.", message_id=f"<{n}@test>")


async def test_mails_share_one_connection(server: tuple[Controller, Recorder], port: int) -> None:
    _, recorder = server
    mailer = _mailer(port)

    for n in range(3):
        await mailer.send(_mail(n), order_id=f"ORDER-{n}")

    assert recorder.delivered == ["buyer0@example.com", "buyer1@example.com", "buyer2@example.com"]
    assert recorder.ehlos == 1


async def test_a_connection_the_server_dropped_is_replaced_before_it_carries_a_mail(port: int) -> None:
    mailer = _mailer(port)
    first = Recorder()
    controller = Controller(first, hostname="127.0.0.1", port=port)
    controller.start()
    await mailer.send(_mail(1), order_id="ORDER-1")
    controller.stop()  # the kept connection dies with the server

    second = Recorder()
    controller = Controller(second, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        await mailer.send(_mail(2), order_id="ORDER-2")
    finally:
        controller.stop()

    assert first.delivered == ["buyer1@example.com"]
    assert second.delivered == ["buyer2@example.com"]
    assert second.ehlos == 1


# --- each send bounded: it starts only in time, is cut off at its deadline, and a cancelled one stops -------------


class SlowRecipients(Recorder):
    """A server that takes ``delay`` seconds to answer RCPT (before the mail's data)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        await asyncio.sleep(self.delay)
        envelope.rcpt_tos.append(address)
        return "250 OK"


async def test_a_send_that_cannot_start_by_its_claim_allows_hands_nothing_over(
    server: tuple[Controller, Recorder], port: int
) -> None:
    _, recorder = server

    with pytest.raises(TooLate):
        await _mailer(port).send(_mail(1), order_id="ORDER-1", start_by=datetime.now(UTC) - timedelta(seconds=1))

    assert (recorder.ehlos, recorder.delivered) == (0, [])


async def test_a_send_is_cut_off_at_its_deadline_and_the_server_gets_no_mail(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(domain, "SEND_TIMEOUT", timedelta(seconds=0.5))
    slow = SlowRecipients(delay=1.5)  # well within SMTP_TIMEOUT per operation, past the send's deadline
    controller = Controller(slow, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        started = time.monotonic()
        with pytest.raises(TransientError):
            await _mailer(port).send(_mail(1), order_id="ORDER-1", start_by=datetime.now(UTC) + timedelta(seconds=5))
        took = time.monotonic() - started
        await asyncio.sleep(slow.delay)  # the server answers RCPT to a client that is gone
    finally:
        controller.stop()

    assert took < 1.0, f"the send took {took:.2f} s, past its 0.5 s"
    assert slow.delivered == []


async def test_a_cancelled_send_never_reaches_the_server(server: tuple[Controller, Recorder], port: int) -> None:
    _, recorder = server
    mailer = HeldMailer("127.0.0.1", port)
    sending = asyncio.create_task(mailer.send(_mail(1), order_id="ORDER-1"))
    await asyncio.to_thread(mailer.reached.wait, 5)  # on its worker thread, about to connect

    sending.cancel()  # the handler is cancelled (a shutdown, a revoked partition)
    with contextlib.suppress(asyncio.CancelledError):
        await sending
    mailer.go.set()
    await asyncio.sleep(0.5)

    assert recorder.delivered == []


async def test_a_mail_handed_over_is_not_handed_over_again_by_the_same_process(
    server: tuple[Controller, Recorder], port: int
) -> None:
    _, recorder = server
    mailer = _mailer(port)

    await mailer.send(_mail(1), order_id="ORDER-1")
    await mailer.send(_mail(1), order_id="ORDER-1")  # a retry after the SENT mark was lost: same Message-ID

    assert recorder.delivered == ["buyer1@example.com"]


async def test_a_send_inside_the_slot_of_its_task_takes_no_second_worker(
    server: tuple[Controller, Recorder], port: int
) -> None:
    _, recorder = server
    mailer = SmtpMailer(
        host="127.0.0.1", port=port, sender="shop@example.com", starttls=False, username="", password="", senders=1
    )

    async with mailer.slot():
        await asyncio.wait_for(mailer.send(_mail(1), order_id="ORDER-1"), 5)

    assert recorder.delivered == ["buyer1@example.com"]


# --- TLS verifies the server: its certificate must chain to the CA file (or the system's CAs) and name it ----------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtp.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("smtp-tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def _server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def starttls_server(port: int, certificate: tuple[Path, Path]) -> Iterator[Recorder]:
    recorder = Recorder()
    controller = Controller(
        recorder, hostname="127.0.0.1", port=port, tls_context=_server_tls(certificate), require_starttls=True
    )
    controller.start()
    yield recorder
    controller.stop()


def _tls_mailer(port: int, *, ca_file: Path | None, implicit: bool = False) -> SmtpMailer:
    return SmtpMailer(
        host="127.0.0.1",
        port=port,
        sender="shop@example.com",
        starttls=not implicit,
        tls=implicit,
        ca_file=str(ca_file) if ca_file else None,
        username="",
        password="",
    )


async def test_starttls_refuses_a_server_whose_certificate_it_cannot_verify(
    starttls_server: Recorder, port: int
) -> None:
    with pytest.raises(Outage, match="TLS"):
        await _tls_mailer(port, ca_file=None).send(_mail(1), order_id="ORDER-1")  # self-signed: no system CA

    assert starttls_server.delivered == []


async def test_starttls_hands_the_mail_to_a_server_verified_by_the_ca_file(
    starttls_server: Recorder, port: int, certificate: tuple[Path, Path]
) -> None:
    await _tls_mailer(port, ca_file=certificate[0]).send(_mail(1), order_id="ORDER-1")

    assert starttls_server.delivered == ["buyer1@example.com"]


async def test_implicit_tls_verifies_the_server_too(port: int, certificate: tuple[Path, Path]) -> None:
    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=port, ssl_context=_server_tls(certificate))
    controller.start()
    try:
        with pytest.raises(Outage, match="TLS"):
            await _tls_mailer(port, ca_file=None, implicit=True).send(_mail(1), order_id="ORDER-1")
        await _tls_mailer(port, ca_file=certificate[0], implicit=True).send(_mail(2), order_id="ORDER-2")
    finally:
        controller.stop()

    assert recorder.delivered == ["buyer2@example.com"]
