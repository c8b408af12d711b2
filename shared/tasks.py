"""Ending asyncio tasks for sure.

On Python 3.11, ``asyncio.wait_for`` (which PyMongo's async driver uses for every socket read and write) returns
its result when a cancellation arrives just as the operation completes (gh-86296, fixed in 3.12): the task carries
on as if never cancelled and can sleep in its loop forever while its owner waits for it to end. Seen in CI as a
timer scanner that never stopped, and it would hang a service's shutdown the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any

NUDGE_SECONDS = 0.5


async def cancelled(*tasks: asyncio.Task[Any] | asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again any that swallowed the request."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=NUDGE_SECONDS)
    for t in tasks:  # retrieve outcomes, so none is reported as "exception never retrieved"
        if not t.cancelled():
            t.exception()
