"""Reading an order's live-tracking stream (``GET /orders/{id}/stream``) as a client does, for every test tier."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import aconnect_sse


@dataclass
class Stream:
    status: int
    events: list[tuple[int, str, dict[str, Any]]]  # (id: the order's version, event name, data)


async def read_stream(
    url: str,
    *,
    headers: dict[str, str],
    then: Callable[[], Awaitable[Any]] | None = None,
    timeout: httpx.Timeout | float = 30,
    within: float = 30,
) -> Stream:
    """Read the stream to its end, for ``within`` seconds at most; after the first event, await ``then()`` once."""
    async with (
        httpx.AsyncClient(timeout=timeout) as http,
        aconnect_sse(http, "GET", url, headers=headers) as source,
    ):
        if source.response.status_code != 200:
            await source.response.aread()
            return Stream(source.response.status_code, [])
        events: list[tuple[int, str, dict[str, Any]]] = []
        async with asyncio.timeout(within):
            async for sse in source.aiter_sse():
                if not sse.data:  # a keep-alive comment (httpx-sse reports it with the last id)
                    continue
                events.append((int(sse.id), sse.event, sse.json()))
                if then is not None and len(events) == 1:
                    await then()
        return Stream(200, events)
