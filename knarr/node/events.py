"""The node's event log: numbered events in a bounded ring, for the cockpit's live stream.

Every event gets the next sequence number, so a client that reconnects asks for what
came after the last number it saw and misses nothing that is still in the ring; if it
fell further behind, it is told to reload the snapshots instead.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    time: float
    type: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "type": self.type, "data": self.data}


class EventLog:
    """Append-only, bounded, awaitable."""

    def __init__(self, capacity: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self.capacity = capacity
        self.clock = clock
        self._events: deque[Event] = deque(maxlen=capacity)
        self._seq = 0
        self._waiter: asyncio.Event | None = None
        self._listeners: list[Callable[[Event], None]] = []

    @property
    def last_seq(self) -> int:
        return self._seq

    def emit(self, type_: str, **data: Any) -> Event:
        self._seq += 1
        event = Event(self._seq, self.clock(), type_, data)
        self._events.append(event)
        for listener in list(self._listeners):
            listener(event)
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None
        return event

    def listen(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener`` for every new event; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def since(self, seq: int) -> list[Event] | None:
        """Events after ``seq``, or ``None`` if some of them are no longer kept."""
        if seq >= self._seq:
            return []
        oldest = self._events[0].seq if self._events else self._seq + 1
        if seq + 1 < oldest:
            return None
        # Sequence numbers are consecutive: the newest ``last_seq - seq`` events, taken
        # from the end, so a client keeping up costs what it receives, not the ring size.
        newer = list(islice(reversed(self._events), self._seq - seq))
        newer.reverse()
        return newer

    async def follow(self, seq: int) -> AsyncIterator[Event | None]:
        """Events after ``seq`` as they happen. Yields ``None`` once if the client is too
        far behind (it must reload), then continues from the oldest kept event."""
        while True:
            batch = self.since(seq)
            if batch is None:
                yield None
                seq = self._events[0].seq - 1 if self._events else self._seq
                continue
            for event in batch:
                seq = event.seq
                yield event
            if self._seq == seq:
                if self._waiter is None:
                    self._waiter = asyncio.Event()
                await self._waiter.wait()
