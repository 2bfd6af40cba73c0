"""One watchman per data folder: an ``flock`` on ``DATA_DIR/watchman/watchman.pid``.

The kernel drops the lock when its holder dies, so a stale pid file never blocks a new
watchman, and other processes learn whether one is running (and its pid) without
trusting the file's contents alone.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from knarr.watchman.errors import AlreadyRunning

LOCK_NAME = "watchman.pid"


class WatchmanLock:
    """Held for as long as a watchman (or an offline upgrade) works on a data folder."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, what: str = "a watchman") -> None:
        """Take the lock and write our pid, or raise :class:`AlreadyRunning`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            pid = running_pid(self.path.parent)
            who = f" (pid {pid})" if pid else ""
            raise AlreadyRunning(
                f"another watchman{who} is already running on {self.path.parent.parent}; "
                f"stop it first (knarr-watchman stop) — refusing to start {what}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                os.close(self._fd)  # closing drops the flock
                self._fd = None

    def __enter__(self) -> WatchmanLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def running_pid(state_dir: Path) -> int | None:
    """The pid of the watchman holding ``state_dir``'s lock, or ``None`` if none does."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            text = os.read(fd, 64).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
