"""Admission: upstream slots, a queue bounded by each call's deadline, refusals at once."""

from __future__ import annotations

import asyncio

import pytest

from detect_proxy.admission import Admission, AtCapacity


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


async def _one_slot_taking(seconds: float, max_wait_s: float) -> tuple[Admission, Clock]:
    """One slot whose last call took ``seconds``: the backend does 1/seconds calls a second."""
    clock = Clock()
    admission = Admission(limit=1, max_wait_s=max_wait_s, clock=clock)
    async with admission.slot(60.0):
        clock.now += seconds
    return admission, clock


def _busy(admission: Admission, hold: asyncio.Event) -> asyncio.Task:
    async def call() -> None:
        async with admission.slot(600.0):
            await hold.wait()
    return asyncio.create_task(call())


def test_calls_under_the_limit_go_straight_through():
    async def main():
        admission = Admission(limit=2, max_wait_s=1.0)
        async with admission.slot(10.0) as queued:
            async with admission.slot(10.0) as queued_too:
                assert (queued, queued_too) == (0.0, 0.0)
                assert (admission.active, admission.queued) == (2, 0)
        assert admission.active == 0
    run(main())


def test_waiters_are_served_in_arrival_order():
    async def main():
        admission = Admission(limit=1, max_wait_s=60.0)
        order: list[int] = []
        release = asyncio.Event()

        async def call(i: int) -> None:
            async with admission.slot(60.0):
                order.append(i)
                await release.wait()

        tasks = [asyncio.create_task(call(i)) for i in range(4)]
        await asyncio.sleep(0.01)
        assert (admission.active, admission.queued) == (1, 3)
        release.set()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3] and admission.active == 0
    run(main())


def test_a_call_that_cannot_wait_long_enough_is_refused_at_once():
    async def main():
        # One call took 2 s: one slot at 0.5 calls/s, so the next waits about 2 s.
        admission, _ = await _one_slot_taking(2.0, max_wait_s=5.0)
        hold = asyncio.Event()
        task = _busy(admission, hold)
        await asyncio.sleep(0)
        assert admission.expected_wait(0) == pytest.approx(2.0)
        # Its deadline leaves 6 s, half of which must hold 2 s of wait and 2 s of work.
        with pytest.raises(AtCapacity) as err:
            async with admission.slot(6.0):
                pass
        assert err.value.expected_wait_s == pytest.approx(2.0)
        assert err.value.affordable_s == pytest.approx(1.0)
        assert admission.queued == 0
        hold.set()
        await task
    run(main())


def test_the_queue_is_bounded_in_time_whatever_the_deadline():
    async def main():
        admission, _ = await _one_slot_taking(0.5, max_wait_s=0.9)
        hold = asyncio.Event()
        tasks = [_busy(admission, hold)]
        await asyncio.sleep(0)
        tasks.append(_busy(admission, hold))  # expected wait 0.5 s: queued
        await asyncio.sleep(0)
        assert admission.queued == 1
        with pytest.raises(AtCapacity):  # 1.0 s ahead of it: over max_wait_s
            async with admission.slot(600.0):
                pass
        hold.set()
        await asyncio.gather(*tasks)
    run(main())


def test_a_caller_that_leaves_the_queue_frees_its_place():
    async def main():
        admission = Admission(limit=1, max_wait_s=60.0)
        hold = asyncio.Event()

        async def call() -> None:
            async with admission.slot(60.0):
                await hold.wait()

        first = asyncio.create_task(call())
        await asyncio.sleep(0)
        leaving = asyncio.create_task(call())
        staying = asyncio.create_task(call())
        await asyncio.sleep(0)
        leaving.cancel()
        await asyncio.sleep(0)
        assert admission.queued == 1
        hold.set()
        await asyncio.gather(first, staying)
        assert leaving.cancelled() and admission.active == 0
    run(main())


def test_throughput_is_slots_over_the_latency_of_completed_calls():
    async def main():
        clock = Clock()
        admission = Admission(limit=2, max_wait_s=60.0, clock=clock)
        for held in (0.5, 0.5, 0.5):
            async with admission.slot(60.0):
                clock.now += held
        assert admission.throughput() == pytest.approx(4.0)  # 2 slots, 0.5 s each
        # A call whose caller left early frees its slot but says nothing of the backend.
        leaving = _busy(admission, asyncio.Event())
        await asyncio.sleep(0)
        clock.now += 0.01
        leaving.cancel()
        await asyncio.sleep(0)
        assert admission.throughput() == pytest.approx(4.0) and admission.active == 0
        # Completed calls move it: slower answers, a slower backend.
        for _ in range(20):
            async with admission.slot(60.0):
                clock.now += 1.0
        assert admission.throughput() == pytest.approx(2.0, rel=0.02)
    run(main())
