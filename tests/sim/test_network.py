"""The simulated network: loss, long-tailed delay, closed ports, spoofed sources."""

from __future__ import annotations

import asyncio
import random

from knarr.sim.loop import VirtualTimeLoop
from knarr.sim.network import LatencyModel, SimNetwork
from knarr.sim.scenario import percentile


async def _virtual_seconds_pass(seconds: float) -> None:
    """Let simulated time advance: on the virtual-time loop this returns at once."""
    await asyncio.sleep(seconds)

def _run(coro: object) -> object:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)  # type: ignore[arg-type]
    finally:
        loop.close()


def test_loss_and_delay_follow_the_model() -> None:
    async def main() -> tuple[int, list[float]]:
        net = SimNetwork(rng=random.Random(1), loss=0.1)
        arrivals: list[float] = []
        loop = asyncio.get_running_loop()
        sent_at: dict[bytes, float] = {}

        def got(data: bytes, src: tuple[str, int]) -> None:
            arrivals.append(loop.time() - sent_at[data])

        a = await net.bind("1.1.1.1", 4000, lambda d, s: None)
        await net.bind("2.2.2.2", 4000, got)
        for i in range(5000):
            data = i.to_bytes(4, "big")
            sent_at[data] = loop.time()
            a.send(data, ("2.2.2.2", 4000))
        await _virtual_seconds_pass(20)
        return net.lost, arrivals

    lost, delays = _run(main())  # type: ignore[misc]
    assert 400 < lost < 600  # 10 % of 5000
    assert len(delays) == 5000 - lost
    # Two fixed access delays plus jitter: a floor, and a tail well above the median.
    assert min(delays) > 0
    assert percentile(delays, 99) > 2 * percentile(delays, 50)
    assert max(delays) <= LatencyModel().max_ms / 1000


def test_a_closed_endpoint_receives_nothing_and_spoofed_sources_arrive_as_given() -> None:
    async def main() -> tuple[list[tuple[str, int]], int]:
        net = SimNetwork(rng=random.Random(2))
        seen: list[tuple[str, int]] = []
        a = await net.bind("1.1.1.1", 4000, lambda d, s: None)
        b = await net.bind("2.2.2.2", 4000, lambda d, s: seen.append(s))
        net.inject(b"spoofed", ("9.9.9.9", 53), ("2.2.2.2", 4000))
        await _virtual_seconds_pass(5)
        b.close()
        a.send(b"late", ("2.2.2.2", 4000))
        await _virtual_seconds_pass(5)
        return seen, net.undeliverable

    seen, undeliverable = _run(main())  # type: ignore[misc]
    assert seen == [("9.9.9.9", 53)]
    assert undeliverable == 1
