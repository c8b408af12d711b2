"""shared.tasks.cancelled ends tasks that swallow a cancellation (as PyMongo's I/O can on Python 3.11)."""

from __future__ import annotations

import asyncio

from shared.tasks import cancelled


async def _swallows_first_cancel(log: list[str]) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        log.append("swallowed")  # what asyncio.wait_for does on 3.11 when its operation completes meanwhile
    while True:
        await asyncio.sleep(0.01)


async def test_a_task_that_swallows_its_cancellation_is_cancelled_again() -> None:
    log: list[str] = []
    task = asyncio.create_task(_swallows_first_cancel(log))
    await asyncio.sleep(0)

    async with asyncio.timeout(5):
        await cancelled(task)

    assert log == ["swallowed"]
    assert task.cancelled()


async def test_finished_and_failed_tasks_are_left_as_they_are() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    done = asyncio.create_task(asyncio.sleep(0, result=7))
    failed = asyncio.create_task(fails())
    await asyncio.sleep(0.01)

    await cancelled(done, failed)

    assert done.result() == 7
    assert isinstance(failed.exception(), ValueError)
