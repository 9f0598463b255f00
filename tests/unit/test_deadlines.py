"""Deadlines checked by one ticker (app/core/deadlines.py) behave as ``asyncio.timeout_at``: a block
past its deadline is cancelled and raises TimeoutError, a block that ends in time is untouched, a
moved deadline holds, a cancellation from elsewhere stays a cancellation; and the ticker runs only
while a deadline is open."""
from __future__ import annotations

import asyncio

import pytest

from app.core.deadlines import Deadlines


@pytest.fixture
async def deadlines() -> Deadlines:
    return Deadlines(asyncio.get_running_loop(), resolution=0.005)


async def test_a_block_past_its_deadline_is_cancelled_and_raises_timeout(deadlines):
    loop = deadlines.loop
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with deadlines.at(started + 0.05):
            await asyncio.sleep(5)
    assert 0.05 <= loop.time() - started < 0.5
    assert asyncio.current_task().cancelling() == 0
    await asyncio.sleep(0)  # the task goes on unharmed


async def test_a_block_that_ends_in_time_is_untouched_and_the_ticker_stops(deadlines):
    async with deadlines.at(deadlines.loop.time() + 0.05) as deadline:
        await asyncio.sleep(0.001)
    assert deadline.when > deadlines.loop.time() - 1
    assert deadlines._open == {}
    await asyncio.sleep(0.03)
    assert deadlines._tick is None  # nothing open: no ticking


async def test_a_rescheduled_deadline_holds_later_and_earlier(deadlines):
    loop = deadlines.loop
    async with deadlines.at(loop.time() + 0.02) as deadline:
        deadline.reschedule(loop.time() + 5)
        await asyncio.sleep(0.06)  # past the first deadline: not cancelled
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with deadlines.at(started + 5) as deadline:
            deadline.reschedule(started + 0.03)
            await asyncio.sleep(5)
    assert loop.time() - started < 0.5


async def test_a_deadline_already_past_cancels_at_the_first_wait(deadlines):
    with pytest.raises(TimeoutError):
        async with deadlines.at(deadlines.loop.time() - 1):
            await asyncio.sleep(1)


async def test_a_cancellation_from_elsewhere_stays_a_cancellation(deadlines):
    async def blocked() -> None:
        async with deadlines.at(deadlines.loop.time() + 5):
            await asyncio.sleep(5)

    task = asyncio.create_task(blocked())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadlines._open == {}


async def test_many_blocks_expire_each_at_its_own_deadline(deadlines):
    loop = deadlines.loop
    ended: dict[int, float] = {}

    async def block(i: int) -> None:
        started = loop.time()
        try:
            async with deadlines.at(started + 0.02 * (i + 1)):
                await asyncio.sleep(5 if i % 2 else 0.001)
        except TimeoutError:
            ended[i] = loop.time() - started

    await asyncio.gather(*(block(i) for i in range(6)))
    assert sorted(ended) == [1, 3, 5]
    for i, took in ended.items():
        assert 0.02 * (i + 1) <= took < 0.02 * (i + 1) + 0.3
    assert deadlines._open == {}
