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
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Mapping
from typing import Any

from knarr.errors import KnarrError


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
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now
