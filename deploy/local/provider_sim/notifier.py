"""Asynchronous notifications to the merchant's notify_url, retried on the provider's schedule.

Each attempt renders the notification afresh (a provider re-signs every attempt with a new time), and the
merchant's reply decides: the provider's own rule says what counts as delivered. Delays between attempts are the
provider's, multiplied by ``--time-scale``. A test can ask for the next notification of a trade to come twice,
late, after the one that follows it, or only when released.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from .clock import now, rfc3339
from .outbound import Outbound

log = logging.getLogger("provider_sim.notifier")

Mode = Literal["duplicate", "late", "out_of_order", "hold"]
Key = tuple[str, str]  # (provider, out_trade_no)


@dataclass
class Attempt:
    number: int
    at: str
    status: int | None
    reply: str
    error: str | None
    delivered: bool


@dataclass
class Notification:
    id: str
    provider: str
    out_trade_no: str
    event: str  # TRADE_SUCCESS, TRANSACTION.SUCCESS, REFUND.SUCCESS, ...
    url: str
    render: Callable[[], tuple[dict[str, str], bytes]]  # headers and body of one attempt, signed now
    accepted: Callable[[httpx.Response], bool]  # the provider's rule for "the merchant has it"
    schedule: tuple[float, ...]  # seconds before each retry, unscaled
    attempts: list[Attempt] = field(default_factory=list)
    state: Literal["queued", "held", "sending", "delivered", "failed"] = "queued"

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.event,
            "url": self.url,
            "state": self.state,
            "attempts": [a.__dict__ for a in self.attempts],
        }


@dataclass
class Notifier:
    time_scale: float
    timeout_seconds: float = 5.0
    sent: dict[Key, list[Notification]] = field(default_factory=dict)
    modes: dict[Key, tuple[Mode, float]] = field(default_factory=dict)
    held: list[Notification] = field(default_factory=list)
    waiting_for_next: dict[Key, Notification] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _client: Outbound | None = None

    def set_mode(self, provider: str, out_trade_no: str, mode: Mode, delay_seconds: float = 0.0) -> None:
        """The next notification of this trade comes twice / late / after the following one / when released."""
        self.modes[(provider, out_trade_no)] = (mode, delay_seconds)

    def send(self, notification: Notification) -> None:
        key = (notification.provider, notification.out_trade_no)
        self.sent.setdefault(key, []).append(notification)
        if (earlier := self.waiting_for_next.pop(key, None)) is not None:
            self._spawn(self._in_turn(notification, earlier))  # the later state's notification first
            return
        mode, delay = self.modes.pop(key, (None, 0.0))
        if mode == "hold":
            notification.state = "held"
            self.held.append(notification)
        elif mode == "out_of_order":
            notification.state = "held"
            self.waiting_for_next[key] = notification
        else:
            self._spawn(
                self._deliver(
                    notification, delay=delay if mode == "late" else 0.0, copies=2 if mode == "duplicate" else 1
                )
            )

    def release(self, provider: str | None = None, out_trade_no: str | None = None) -> int:
        """Send the held notifications (those of one provider or trade, or all); how many were released."""

        def chosen(n: Notification) -> bool:
            return (provider is None or n.provider == provider) and (
                out_trade_no is None or n.out_trade_no == out_trade_no
            )

        released = [n for n in self.held if chosen(n)]
        self.held = [n for n in self.held if not chosen(n)]
        for key, n in list(self.waiting_for_next.items()):
            if chosen(n):
                released.append(self.waiting_for_next.pop(key))
        for n in released:
            self._spawn(self._deliver(n))
        return len(released)

    def of(self, provider: str, out_trade_no: str) -> list[dict[str, Any]]:
        return [n.view() for n in self.sent.get((provider, out_trade_no), [])]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _in_turn(self, first: Notification, then: Notification) -> None:
        await self._deliver(first)
        await self._deliver(then)

    async def _deliver(self, n: Notification, *, delay: float = 0.0, copies: int = 1) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        if self._client is None:
            self._client = Outbound(self.timeout_seconds)
        for _ in range(copies):
            n.state = "sending"
            for retry, wait in enumerate((0.0, *n.schedule)):
                if retry:
                    await asyncio.sleep(wait * self.time_scale)
                if await self._attempt(self._client, n):
                    n.state = "delivered"
                    break
            else:
                n.state = "failed"
                log.warning("notification %s to %s given up after %d attempts", n.id, n.url, len(n.attempts))

    @staticmethod
    async def _attempt(client: Outbound, n: Notification) -> bool:
        headers, body = n.render()
        number, at = len(n.attempts) + 1, rfc3339(now())
        try:
            response = await client.post(n.url, content=body, headers=headers)
        except httpx.HTTPError as e:
            n.attempts.append(Attempt(number, at, None, "", f"{type(e).__name__}: {e}", False))
            return False
        delivered = n.accepted(response)
        n.attempts.append(Attempt(number, at, response.status_code, response.text[:200], None, delivered))
        return delivered
