"""An asyncio event loop whose clock is virtual: waiting costs no wall time.

The loop is an ordinary :class:`asyncio.SelectorEventLoop` with two changes: :meth:`time`
reads a virtual clock, and the selector never blocks. When the loop would wait for I/O
until its next timer, the selector instead moves the clock forward by that timeout and
reports no events, so the loop runs the timer at once. Everything built on the loop's
timers (``asyncio.sleep``, ``call_later``, ``asyncio.timeout``) runs in virtual time and
in a deterministic order.

There is no I/O in a simulation: the simulated network delivers datagrams with
``call_later``. A loop with nothing ready and no timer can never make progress again, so
the selector raises :class:`SimulationStuck` instead of sleeping forever.

Timers are the simulator's busiest data structure (a delivery per datagram, a timeout and
a stall timer per request), so the loop keeps them in a heap of ``(when, sequence,
handle)`` tuples, which compare in C, instead of asyncio's heap of handles, which compare
through a Python ``__lt__``; equal times run in the order they were set. That replaces
two methods of CPython 3.11's ``BaseEventLoop`` (``call_at`` and ``_run_once``, the
latter without the I/O poll, since there is no I/O); everything else is asyncio's own.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import selectors
from collections.abc import Callable, Mapping
from contextvars import Context
from typing import Any, TypeVarTuple, Unpack

from knarr.errors import KnarrError

_Ts = TypeVarTuple("_Ts")


class SimulationStuck(KnarrError):
    """Nothing is ready and no timer is set: the awaited result can never arrive."""


class _VirtualSelector(selectors.BaseSelector):
    """A selector that never waits: ``select(timeout)`` advances the clock instead."""

    def __init__(self) -> None:
        self._keys: dict[Any, selectors.SelectorKey] = {}
        self.now = 0.0

    def register(
        self, fileobj: Any, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, _fileno(fileobj), events, data)
        self._keys[key.fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(_fileno(fileobj))

    def select(
        self, timeout: float | None = None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise SimulationStuck(
                "the simulation is stuck: nothing is ready and no timer is set, "
                "so the awaited result can never arrive"
            )
        if timeout > 0:
            self.now += timeout
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


def _fileno(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock that starts at ``start`` seconds."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual = _VirtualSelector()
        self._virtual.now = start
        self._timers: list[tuple[float, int, asyncio.TimerHandle]] = []
        self._sequence = itertools.count()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now

    def call_at(
        self, when: float, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts,
        context: Context | None = None,
    ) -> asyncio.TimerHandle:
        if when is None:
            raise TypeError("when cannot be None")
        base: Any = self  # asyncio's internals, which typeshed does not describe
        base._check_closed()
        timer: Any = asyncio.TimerHandle(when, callback, args, self, context)
        heapq.heappush(self._timers, (when, next(self._sequence), timer))
        timer._scheduled = True
        return timer  # type: ignore[no-any-return]

    def close(self) -> None:
        self._timers.clear()
        super().close()

    def _run_once(self) -> None:
        """One turn of the loop: drop cancelled timers, jump the clock to the next
        timer if nothing is ready, then run what is due (as asyncio's ``_run_once``)."""
        base: Any = self
        timers: list[tuple[float, int, Any]] = self._timers
        cancelled: int = base._timer_cancelled_count
        if len(timers) > 100 and 2 * cancelled > len(timers):
            for _, _, handle in timers:
                if handle._cancelled:
                    handle._scheduled = False
            timers[:] = [t for t in timers if not t[2]._cancelled]
            heapq.heapify(timers)
            cancelled = 0
        else:
            while timers and timers[0][2]._cancelled:
                cancelled -= 1
                heapq.heappop(timers)[2]._scheduled = False
        base._timer_cancelled_count = cancelled
        ready = base._ready
        virtual = self._virtual
        if not ready and not base._stopping:
            if not timers:
                virtual.select(None)  # raises SimulationStuck
            if timers[0][0] > virtual.now:
                virtual.now = timers[0][0]
        end = virtual.now + base._clock_resolution
        while timers and timers[0][0] < end:
            handle = heapq.heappop(timers)[2]
            handle._scheduled = False
            ready.append(handle)
        for _ in range(len(ready)):
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()
