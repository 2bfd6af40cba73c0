"""Real watchman processes supervising real nodes, on loopback, with sub-second intervals.

Nothing here sleeps to wait: helpers poll a condition until a deadline (generous, since
CI machines are shared) and fail with what was seen so far.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from knarr.cli.cockpit_client import cockpit_request

WATCHMAN = [sys.executable, "-m", "knarr.watchman.cli"]
NODE_ARGS = ["-m", "knarr.cli.main", "serve", "--headless", "--host", "127.0.0.1",
             "--port", "0", "--bootstrap", "", "--log-level", "WARNING"]
DEADLINE = 30.0
# New environments reuse this test environment's packages: nothing is downloaded.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1",
       "KNARR_WATCHMAN_DEPS_FROM": sysconfig.get_paths()["purelib"]}


async def wait_until(
    predicate: Callable[[], Awaitable[bool] | bool], timeout: float = DEADLINE,
    what: str = "condition",
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not met within {timeout} s")
        await asyncio.sleep(0.02)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A node folder with a short path (a Unix socket path must fit in 108 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="wm-", dir="/tmp"))
    (folder / "knarr.toml").write_text("[network]\nupnp = false\n")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def watchman_toml(
    data_dir: Path, *, command: str = sys.executable, args: list[str] | None = None,
    health: dict[str, Any] | None = None, recovery: dict[str, Any] | None = None,
    upgrade: dict[str, Any] | None = None, name: str = "watchman.toml",
) -> Path:
    """A watchman.toml for tests: the node from this checkout, sub-second intervals."""
    if args is None:
        args = [*NODE_ARGS, "--data-dir", str(data_dir)]
    sections = {
        "node": {"command": command, "args": args, "data_dir": str(data_dir)},
        "health": {"health_interval": 0.2, "health_fail_threshold": 3, "kill_grace": 0.5,
                   **(health or {})},
        "recovery": {"max_restarts": 5, "initial_backoff": 0, "max_backoff": 1,
                     "backoff_reset_uptime": 600, **(recovery or {})},
        "upgrade": {"drain_timeout": 10, "health_timeout": 20, **(upgrade or {})},
    }
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
        lines.append("")
    path = data_dir / name
    path.write_text("\n".join(lines))
    return path


async def health(data_dir: Path, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        body = await cockpit_request(data_dir / "cockpit.sock", "GET", "/health",
                                     timeout=timeout)
    except Exception:  # noqa: BLE001 - down is an answer here
        return None
    return body if isinstance(body, dict) else None


def state(data_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((data_dir / "watchman" / "state.json").read_text())
    except (OSError, ValueError):
        return {}


async def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None
                  ) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *WATCHMAN, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env or ENV,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Watchman:
    """``knarr-watchman --config FILE run`` in a subprocess, its event lines collected."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.data_dir = config.parent
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.log = self.data_dir / "watchman-stderr.log"

    async def start(self) -> Watchman:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *WATCHMAN, "--config", str(self.config), "run",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=err,
                env=ENV,
            )
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode().rstrip("\n"))

    async def wait_line(self, prefix: str, *, after: int = 0, timeout: float = DEADLINE) -> int:
        """The index of the first line from ``after`` on that starts with ``prefix``."""
        found: list[int] = []

        def seen() -> bool:
            found[:] = [i for i, ln in enumerate(self.lines) if i >= after and
                        ln.startswith(prefix)]
            return bool(found)

        try:
            await wait_until(seen, timeout, f"a line starting {prefix!r}")
        except AssertionError:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise AssertionError(f"no {prefix!r} line within {timeout} s; lines: {self.lines}"
                                 f"\nstderr tail:\n{tail}") from None
        return found[0]

    async def line(self, index: int, timeout: float = DEADLINE) -> str:
        """Line ``index``, once it has been printed."""
        await wait_until(lambda: len(self.lines) > index, timeout, f"line {index}")
        return self.lines[index]

    async def wait_exit(self, timeout: float = DEADLINE) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def close(self) -> None:
        """Stop it (and any node it left behind) whatever state the test left it in."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await self._reader
        node = state(self.data_dir).get("node_pid")
        if isinstance(node, int):
            try:
                os.killpg(node, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
async def watchmen() -> AsyncIterator[Callable[[Path], Awaitable[Watchman]]]:
    started: list[Watchman] = []

    async def start(config: Path) -> Watchman:
        w = await Watchman(config).start()
        started.append(w)
        return w

    yield start
    for w in started:
        await w.close()
