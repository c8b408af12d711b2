"""shared.mongo.on_concurrent_update: a read-decide-write that lost a race is decided again, a bounded number of
times, and any other error is not retried."""

from __future__ import annotations

import pytest

from shared.mongo import ConcurrentUpdate, on_concurrent_update


async def test_a_lost_race_is_decided_again_with_the_attempt_number() -> None:
    seen: list[int] = []

    async def work(attempt: int) -> str:
        seen.append(attempt)
        if attempt < 3:
            raise ConcurrentUpdate("order-1")
        return f"written on attempt {attempt}"

    assert await on_concurrent_update(work) == "written on attempt 3"
    assert seen == [1, 2, 3]


async def test_after_the_last_attempt_the_race_is_raised() -> None:
    seen: list[int] = []

    async def work(attempt: int) -> None:
        seen.append(attempt)
        raise ConcurrentUpdate("order-1")

    with pytest.raises(ConcurrentUpdate):
        await on_concurrent_update(work, attempts=4)
    assert seen == [1, 2, 3, 4]


async def test_other_errors_are_not_retried() -> None:
    seen: list[int] = []

    async def work(attempt: int) -> None:
        seen.append(attempt)
        raise ValueError("a bug, not a race")

    with pytest.raises(ValueError):
        await on_concurrent_update(work)
    assert seen == [1]
