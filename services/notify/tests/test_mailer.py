"""The mailer keeps its SMTP connections: mails share one connection, and one the server dropped is replaced
before it carries a mail. Against a real SMTP server (aiosmtpd, in this process, on a free loopback port)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from services.notify.domain import Mail
from services.notify.mailer import SmtpMailer


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
