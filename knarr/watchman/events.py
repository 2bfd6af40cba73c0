"""Supervisor events: one ``WATCHMAN_*`` / ``UPGRADE_*`` log line each, and an outbox that
keeps them until the node's cockpit has recorded them.

The outbox is a folder with one JSON file per event, so the running watchman and a
command run beside it (``upgrade`` while the node is stopped) can both add events
without locking, and events that happen while the node is down (or after the watchman
gave up) reach the console once a node is healthy again.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

Value = str | int | float

OUTBOX_LIMIT = 1000
"""Most undelivered events kept; the oldest are dropped past it."""


@dataclass(frozen=True)
class WatchmanEvent:
    """``WATCHMAN_CRASH exit_code=-9``: a name, ordered fields, and when it happened."""

    name: str
    fields: tuple[tuple[str, Value], ...]
    time: float

    def line(self) -> str:
        """The log line: the name, then ``key=value`` pairs (values with spaces quoted)."""
        return " ".join([self.name, *(f"{k}={_show(v)}" for k, v in self.fields)])

    def payload(self) -> dict[str, Any]:
        """The body for the cockpit's ``POST /v1/watchman``.

        ``at`` is when the event happened (the journal's own ``time`` is when it was
        delivered, later for events from while the node was down); ``detail`` is what
        the console's watchman panel shows.
        """
        return {
            "event": self.name,
            **dict(self.fields),
            "at": self.time,
            "detail": " ".join(f"{k}={_show(v)}" for k, v in self.fields),
            "watchman_pid": os.getpid(),
        }


def _show(value: Value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c in "\"'=" for c in text)) else text


class Outbox:
    """Undelivered events, one file each in ``folder``, oldest first."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._seq = 0

    def add(self, event: WatchmanEvent) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.json"
        write_atomic(self.folder / name, json.dumps(event.payload()).encode())
        files = self._files()
        for old in files[: max(0, len(files) - OUTBOX_LIMIT)]:
            old.unlink(missing_ok=True)

    def pending(self) -> list[tuple[Path, dict[str, Any]]]:
        out: list[tuple[Path, dict[str, Any]]] = []
        for path in self._files():
            try:
                body = json.loads(path.read_bytes())
            except (OSError, ValueError):
                path.unlink(missing_ok=True)  # half-written by a process that died
                continue
            if isinstance(body, dict):
                out.append((path, body))
        return out

    def __len__(self) -> int:
        return len(self._files())

    def _files(self) -> list[Path]:
        try:
            return sorted(p for p in self.folder.iterdir() if p.suffix == ".json")
        except FileNotFoundError:
            return []


class EventLog:
    """Writes each event's line to ``out`` and keeps it in the outbox for the cockpit."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        out: TextIO | None = None,
        on_event: Callable[[WatchmanEvent], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.out = out
        self.on_event = on_event
        self.clock = clock

    def emit(self, name: str, **fields: Value) -> WatchmanEvent:
        event = WatchmanEvent(name, tuple(fields.items()), self.clock())
        out = self.out if self.out is not None else sys.stdout
        say(event.line(), out)
        self.outbox.add(event)
        if self.on_event is not None:
            self.on_event(event)
        return event


def say(text: str, out: TextIO | None = None) -> None:
    """Print one line in one write. The watchman and the upgrade process it starts share
    a stdout; ``print`` writes a line's text and its newline separately when Python's
    output is unbuffered (``PYTHONUNBUFFERED``, common under service managers), and the
    other process's line could land between the two."""
    out = out if out is not None else sys.stdout
    out.write(text + "\n")
    out.flush()


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
