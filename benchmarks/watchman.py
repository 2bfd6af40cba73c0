"""knarr-watchman: how fast it notices a dead or hung node, and what it costs while idle.

One watchman (``knarr-watchman --config FILE run``, a subprocess as in production)
supervises one real node (``knarr serve --headless``) on loopback, with zero backoff.
Measured from this script:

* crash: ``SIGKILL`` to the node → the watchman's ``WATCHMAN_CRASH`` line arrives on its
  stdout (notice), and → the restarted node answers ``GET /health`` on its socket;
* hang: ``SIGSTOP`` to the node → ``WATCHMAN_CRASH ... reason=health`` (killed), and →
  healthy again; this depends on ``health_interval × health_fail_threshold`` (set with
  ``--hang-interval``, threshold 3), reported beside it;
* idle: the watchman's RSS, and its CPU use over ``--idle-seconds`` with a healthy node
  probed every ``--idle-interval`` seconds (the default config probes every 10 s).

Targets (issue 9): notice ≤ 50 ms, healthy again ≤ 2 s, RSS < 30 MB, idle CPU < 0.5 %.
The machine's load average is printed, since other work moves these numbers.

    .venv/bin/python benchmarks/watchman.py [--runs 5] [--idle-seconds 20] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from knarr.cli.cockpit_client import cockpit_request

NODE_ARGS = ["-m", "knarr.cli.main", "serve", "--headless", "--host", "127.0.0.1", "--port",
             "0", "--bootstrap", "", "--log-level", "WARNING"]


def _config(folder: Path, interval: float) -> Path:
    args = json.dumps([*NODE_ARGS, "--data-dir", str(folder)])
    path = folder / "watchman.toml"
    path.write_text(f"""[node]
command = {json.dumps(sys.executable)}
args = {args}
data_dir = {json.dumps(str(folder))}
[health]
health_interval = {interval}
health_fail_threshold = 3
kill_grace = 2
[recovery]
max_restarts = 1000
initial_backoff = 0
max_backoff = 0
[upgrade]
health_timeout = 30
""")
    return path


class Run:
    """A watchman subprocess whose stdout lines are time-stamped on arrival."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.folder = config.parent
        self.lines: list[tuple[float, str]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "knarr.watchman.cli", "--config", str(self.config), "run",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append((time.perf_counter(), line.decode().strip()))

    async def line_after(self, t0: float, prefix: str, timeout: float = 60) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            for t, line in self.lines:
                if t >= t0 and line.startswith(prefix):
                    return t
            await asyncio.sleep(0.001)
        raise RuntimeError(f"no {prefix} line; saw {self.lines[-5:]}")

    async def healthy(self, timeout: float = 60, poll: float = 0.005) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            try:
                body = await cockpit_request(self.folder / "cockpit.sock", "GET", "/health",
                                             timeout=1)
                if body.get("status") == "ok":
                    return time.perf_counter()
            except Exception:  # noqa: BLE001 - not up yet
                pass
            await asyncio.sleep(poll)
        raise RuntimeError("the node did not become healthy")

    def node_pid(self) -> int:
        state = json.loads((self.folder / "watchman" / "state.json").read_text())
        return int(state["node_pid"])

    async def settled(self) -> int:
        """Wait until the watchman itself has seen the node healthy; the node's pid."""
        deadline = time.perf_counter() + 60
        while time.perf_counter() < deadline:
            try:
                state = json.loads((self.folder / "watchman" / "state.json").read_text())
            except (OSError, ValueError):
                state = {}
            if state.get("health") == "healthy":
                return int(state["node_pid"])
            await asyncio.sleep(0.01)
        raise RuntimeError("the watchman never saw the node healthy")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 60)
        if self.reader is not None:
            await self.reader


async def measure(runs: int, hang_interval: float, idle_seconds: float,
                  idle_interval: float) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="wmb-", dir="/tmp"))
    (folder / "knarr.toml").write_text("[network]\nupnp = false\n")
    try:
        crash_notice, crash_healthy, hang_kill, hang_healthy = [], [], [], []
        run = Run(_config(folder, hang_interval))
        await run.start()
        await run.healthy()
        for _ in range(runs):
            pid = await run.settled()
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            crash_notice.append(await run.line_after(t0, "WATCHMAN_CRASH") - t0)
            crash_healthy.append(await run.healthy() - t0)
        for _ in range(runs):
            pid = await run.settled()
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGSTOP)
            hang_kill.append(await run.line_after(t0, "WATCHMAN_CRASH") - t0)
            hang_healthy.append(await run.healthy() - t0)
        await run.stop()

        idle = Run(_config(folder, idle_interval))
        await idle.start()
        await idle.healthy()
        await idle.settled()
        assert idle.proc is not None
        watchman = psutil.Process(idle.proc.pid)
        await asyncio.sleep(2 * idle_interval)  # let it reach its steady state
        before = watchman.cpu_times()
        t0 = time.perf_counter()
        await asyncio.sleep(idle_seconds)
        after = watchman.cpu_times()
        elapsed = time.perf_counter() - t0
        cpu = (after.user + after.system - before.user - before.system) / elapsed * 100
        memory = watchman.memory_full_info()
        await idle.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "runs": runs, "hang_interval": hang_interval, "idle_interval": idle_interval,
        "idle_seconds": idle_seconds, "load_average": os.getloadavg(),
        "crash_notice_ms": [x * 1000 for x in crash_notice],
        "crash_healthy_s": crash_healthy,
        "hang_kill_s": hang_kill,
        "hang_healthy_s": hang_healthy,
        "watchman_rss_mb": memory.rss / 2**20,
        "watchman_uss_mb": memory.uss / 2**20,
        "watchman_idle_cpu_percent": cpu,
    }


def table(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    def p50(xs: list[float]) -> float:
        return statistics.median(xs)

    hang = f"interval {r['hang_interval']:g} s × 3"
    return [
        ("SIGKILL → WATCHMAN_CRASH line, p50 / max (ms)",
         f"{p50(r['crash_notice_ms']):.1f} / {max(r['crash_notice_ms']):.1f}", "≤ 50", ""),
        ("SIGKILL → /health answers again, p50 / max (s)",
         f"{p50(r['crash_healthy_s']):.2f} / {max(r['crash_healthy_s']):.2f}", "≤ 2", ""),
        ("SIGSTOP → node killed, p50 / max (s)",
         f"{p50(r['hang_kill_s']):.2f} / {max(r['hang_kill_s']):.2f}", "", hang),
        ("SIGSTOP → /health answers again, p50 / max (s)",
         f"{p50(r['hang_healthy_s']):.2f} / {max(r['hang_healthy_s']):.2f}", "", hang),
        ("watchman RSS / USS (MB)",
         f"{r['watchman_rss_mb']:.1f} / {r['watchman_uss_mb']:.1f}", "< 30", ""),
        ("watchman idle CPU (%)", f"{r['watchman_idle_cpu_percent']:.3f}", "< 0.5",
         f"probe every {r['idle_interval']:g} s, {r['idle_seconds']:g} s sampled"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hang-interval", type=float, default=0.2)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--idle-interval", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(measure(args.runs, args.hang_interval, args.idle_seconds,
                                 args.idle_interval))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"load average: {' '.join(f'{x:.2f}' for x in result['load_average'])}, "
          f"{os.cpu_count()} CPUs, {args.runs} runs")
    print("| metric | watchman | target | note |")
    print("|---|---|---|---|")
    for row in table(result):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
