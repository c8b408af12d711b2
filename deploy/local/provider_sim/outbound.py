"""The simulator's outgoing calls (payment notifications, carrier pushes): a few at a time, like a provider's
push workers.

Hundreds of calls queued inside httpx's own connection pool time out there (a failed attempt, so a retry: more
calls), and the pool's handling of its queue costs time per call per waiting call, which took a whole core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import httpx


class Outbound:
    def __init__(self, timeout_seconds: float, max_in_flight: int = 16) -> None:
        limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
        self._client = httpx.AsyncClient(timeout=timeout_seconds, limits=limits)
        self._slots = asyncio.Semaphore(max_in_flight)

    async def post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """One call once a slot is free; the timeout counts from when it is sent, not while it waits its turn."""
        async with self._slots:
            return await self._client.post(url, content=content, headers=dict(headers))

    async def aclose(self) -> None:
        await self._client.aclose()
