"""``status`` and ``stop``, run from another process than the watchman.

Status joins three sources: the watchman's state file (pids, restarts, last exit code),
the node's own ``/health`` (its version), and psutil (memory and CPU of both processes).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import psutil

from knarr.errors import NetworkError
from knarr.watchman.cockpit import CockpitLink
from knarr.watchman.config import WatchmanConfig
from knarr.watchman.errors import WatchmanError
from knarr.watchman.lock import running_pid
from knarr.watchman.state import read_state

CPU_SAMPLE = 0.2
"""Seconds over which CPU use is measured."""


async def collect_status(config: WatchmanConfig) -> dict[str, Any]:
    """Everything ``status`` shows, as one JSON-ready mapping."""
    pid = running_pid(config.state_dir)
    state = read_state(config.state_dir) or {}
    running = pid is not None
    node_pid = state.get("node_pid") if running else None
    out: dict[str, Any] = {
        "data_dir": str(config.data_dir),
        "watchman": {"running": running, "pid": pid if running and pid != -1 else None,
                     "uptime": _since(state.get("watchman_started")) if running else None},
        "node": {"running": False, "pid": None, "version": None, "uptime": None,
                 "install": state.get("install")},
        "phase": state.get("phase") if state else None,
        "restarts": state.get("restarts", 0),
        "attempt": state.get("attempt", 0),
        "last_exit_code": state.get("last_exit_code"),
        "health": "unknown",
        "health_error": None,
    }
    procs: dict[str, psutil.Process] = {}
    for name, p in (("watchman", pid), ("node", node_pid)):
        if isinstance(p, int) and p > 0:
            try:
                procs[name] = psutil.Process(p)
                procs[name].cpu_percent(None)
            except psutil.Error:
                pass
    if "node" in procs:
        out["node"].update(running=True, pid=node_pid, uptime=_since(state.get("node_started")))
    link = CockpitLink(config.data_dir, config.health.cockpit_url)
    sample = asyncio.ensure_future(asyncio.sleep(CPU_SAMPLE))
    try:
        health = await link.health(timeout=max(1.0, min(5.0, config.health.health_interval)))
        out["health"] = "healthy" if health.get("status") == "ok" else str(health.get("status"))
        out["node"]["version"] = health.get("version")
        out["node"]["node_id"] = health.get("node_id")
    except NetworkError as exc:
        out["health"] = "unreachable"
        out["health_error"] = str(exc)
    await sample
    for name, proc in procs.items():
        try:
            with proc.oneshot():
                out[name]["memory_rss"] = proc.memory_info().rss
                out[name]["cpu_percent"] = round(proc.cpu_percent(None), 1)
        except psutil.Error:
            pass
    return out


def render_status(status: dict[str, Any]) -> str:
    """The human table."""
    w, n = status["watchman"], status["node"]
    rows = [("Data dir", status["data_dir"])]
    if w["running"]:
        rows.append(("Watchman", f"running, pid {w['pid']}, up {_duration(w['uptime'])}"))
    else:
        rows.append(("Watchman", "not running" + (
            f" (last: {status['phase']})" if status.get("phase") else "")))
    if n["running"]:
        rows.append(("Node", f"running, pid {n['pid']}, up {_duration(n['uptime'])}"))
    else:
        rows.append(("Node", "not running"))
    rows.append(("Version", n.get("version") or (f"{n['install']} (installed)" if n.get(
        "install") else "-")))
    health = status["health"]
    if status.get("health_error"):
        health += f" ({status['health_error']})"
    rows.append(("Health", health))
    rows.append(("Restarts", f"{status['restarts']} (consecutive: {status['attempt']})"))
    code = status["last_exit_code"]
    rows.append(("Last exit code", "-" if code is None else str(code)))
    for label, key in (("Memory", "memory_rss"), ("CPU", "cpu_percent")):
        parts = []
        for who in ("node", "watchman"):
            value = status[who].get(key)
            if value is not None:
                shown = f"{value / 2**20:.1f} MB" if key == "memory_rss" else f"{value:.1f} %"
                parts.append(f"{shown} ({who})")
        rows.append((label, ", ".join(parts) or "-"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


async def stop_watchman(config: WatchmanConfig, timeout: float) -> int | None:
    """SIGTERM the watchman and wait for it to finish; its pid, or ``None`` if none ran."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    pid = running_pid(config.state_dir)
    while pid == -1 and loop.time() < deadline:  # starting: the pid is not written yet
        await asyncio.sleep(0.02)
        pid = running_pid(config.state_dir)
    if pid is None:
        return None
    if pid == -1:
        raise WatchmanError(f"a watchman holds {config.state_dir} but wrote no pid")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    deadline = loop.time() + timeout
    while running_pid(config.state_dir) is not None:
        if loop.time() > deadline:
            raise WatchmanError(f"the watchman (pid {pid}) did not stop within {timeout:g} s")
        await asyncio.sleep(0.05)
    return pid


def _since(start: object) -> float | None:
    return max(0.0, time.time() - start) if isinstance(start, int | float) else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"
