"""The virtual-time loop: timers jump instead of waiting, a stuck simulation says so."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from knarr.sim.loop import SimulationStuck, VirtualTimeLoop


@pytest.fixture
def loop() -> Iterator[VirtualTimeLoop]:
    loop = VirtualTimeLoop()
    yield loop
    loop.close()


def test_an_hour_of_sleep_takes_no_wall_time(loop: VirtualTimeLoop) -> None:
    started = time.perf_counter()
    loop.run_until_complete(asyncio.sleep(3600))
    assert loop.time() == pytest.approx(3600)
    assert time.perf_counter() - started < 1.0


def test_timers_fire_in_order_at_their_virtual_times(loop: VirtualTimeLoop) -> None:
    fired: list[tuple[str, float]] = []
    for name, delay in (("c", 30.0), ("a", 0.5), ("b", 2.0), ("a2", 0.5)):
        loop.call_later(delay, lambda n=name: fired.append((n, loop.time())))
    loop.run_until_complete(asyncio.sleep(60))
    assert fired == [("a", 0.5), ("a2", 0.5), ("b", 2.0), ("c", 30.0)]


def test_timeouts_use_the_virtual_clock(loop: VirtualTimeLoop) -> None:
    async def main() -> float:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.sleep(100)
        return loop.time()

    assert loop.run_until_complete(main()) == pytest.approx(5)


def test_a_future_nobody_resolves_raises_instead_of_hanging(loop: VirtualTimeLoop) -> None:
    async def stuck() -> None:
        await loop.create_future()

    with pytest.raises(SimulationStuck, match="stuck"):
        loop.run_until_complete(stuck())


def test_the_clock_can_start_anywhere() -> None:
    loop = VirtualTimeLoop(start=1000.0)
    try:
        loop.run_until_complete(asyncio.sleep(1))
        assert loop.time() == pytest.approx(1001.0)
    finally:
        loop.close()
