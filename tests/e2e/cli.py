"""What the end-to-end suites share: running the ``knarr`` CLI as a new user would, in a
subprocess, on ports of 127.0.0.1 that are free."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

KNARR = [sys.executable, "-m", "knarr.cli.main"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def free_port(kinds: tuple[int, ...] = (socket.SOCK_DGRAM, socket.SOCK_STREAM)) -> int:
    """A port free for every socket kind in ``kinds`` on 127.0.0.1 (by default UDP for
    the DHT and TCP for tasks)."""
    while True:
        with socket.socket(socket.AF_INET, kinds[0]) as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                for kind in kinds[1:]:
                    with socket.socket(socket.AF_INET, kind) as other:
                        other.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def knarr(*args: str, cwd: Path | None = None,
          timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``knarr ARGS...``, run to the end, its output captured."""
    return subprocess.run(
        [*KNARR, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV
    )


def read_banner(proc: subprocess.Popen[str]) -> list[str]:
    """The lines ``knarr serve`` prints before its first blank line."""
    assert proc.stdout is not None
    banner: list[str] = []
    for line in proc.stdout:
        if not line.strip():
            break
        banner.append(line.rstrip())
    return banner
