"""The supervisor behind ``knarr-watchman run``: the node as a child process, restarted
with backoff, probed for health, switched between installed versions.

One asyncio loop. :meth:`Supervisor._main` owns the child: it awaits the child's exit
(no polling) together with a stop, a health kill or a switch request, whichever comes
first. Three helpers run beside it in one task group: the health probe, the delivery of
events to the node's cockpit, and (with ``auto_upgrade``) the periodic upgrade check.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

import psutil

from knarr.errors import ConfigError, NetworkError
from knarr.watchman import control
from knarr.watchman.cockpit import CockpitLink, CockpitRefused
from knarr.watchman.config import WatchmanConfig
from knarr.watchman.control import SwitchRequest, SwitchResult
from knarr.watchman.events import EventLog, Outbox, WatchmanEvent
from knarr.watchman.installs import Installs
from knarr.watchman.lock import WatchmanLock
from knarr.watchman.recovery import GiveUp, RestartBudget
from knarr.watchman.state import read_state, write_state

EXIT_GAVE_UP: Final = 3
"""``run``'s exit status after ``WATCHMAN_GIVE_UP`` (the systemd unit does not restart it)."""
SPAWN_FAILED: Final = 127
STARTUP_PROBE_INTERVAL: Final = 0.1
"""Seconds between probes until a freshly started node first answers."""


def resolve_command(config: WatchmanConfig, installs: Installs) -> list[str]:
    """``[node] command`` as a path: the active install's ``bin`` first, then ``PATH``."""
    command = config.node.command
    if "/" in command:
        path = config.base_dir / Path(command).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"{config.source}: node.command: {path} does not exist or is "
                              "not executable")
        return [str(path), *config.node.argv_tail]
    bin_dir = installs.bin_dir()
    if bin_dir is not None and (bin_dir / command).is_file():
        return [str(bin_dir / command), *config.node.argv_tail]
    found = shutil.which(command)
    if found is None:
        where = f"in {bin_dir} or " if bin_dir is not None else ""
        raise ConfigError(f"{config.source}: node.command: {command!r} not found {where}on "
                          "PATH (install knarr, or set the full path)")
    return [found, *config.node.argv_tail]


@dataclass
class Child:
    """One run of the node."""

    proc: asyncio.subprocess.Process
    exit: asyncio.Future[int]
    started: float
    """Monotonic time of the start."""
    started_wall: float
    create_time: float
    healthy_since: float | None = None


class Supervisor:
    """Runs one node until stopped, or until restarting it stops helping."""

    def __init__(self, config: WatchmanConfig, *, out: TextIO | None = None) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.installs = Installs(config.data_dir)
        self.link = CockpitLink(config.data_dir, config.health.cockpit_url)
        self.budget = RestartBudget(config.recovery)
        self.events = EventLog(Outbox(self.state_dir / "outbox"), out=out,
                               on_event=self._on_event)
        self.lock = WatchmanLock(self.state_dir)
        self.child: Child | None = None
        self.phase = "starting"
        self.health = "starting"
        self.consecutive = 0
        self.unhealthy = False
        self.last_exit: int | None = None
        self.node_version: str | None = None
        self.started_wall = time.time()
        self._stop = asyncio.Event()
        self._health_kill = asyncio.Event()
        self._deliver = asyncio.Event()
        self._probe_wake = asyncio.Event()
        self._requests: asyncio.Queue[SwitchRequest] = asyncio.Queue()
        self._seen_requests: set[str] = set()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        resolve_command(self.config, self.installs)  # a bad command fails before anything
        self.lock.acquire()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
        try:
            self._stop_orphan()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            loop.add_signal_handler(signal.SIGUSR1, self._take_requests)
            self._take_requests()
            async with asyncio.TaskGroup() as tg:
                helpers = [tg.create_task(self._health_loop()),
                           tg.create_task(self._delivery_loop())]
                if self.config.upgrade.auto_upgrade:
                    helpers.append(tg.create_task(self._auto_upgrade_loop()))
                try:
                    return await self._main()
                finally:
                    for task in helpers:
                        task.cancel()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if self.child is not None and self.child.proc.returncode is None:
                _signal_group(self.child.proc.pid, signal.SIGTERM)  # we failed; don't orphan it
            self.child = None
            self.health = "down"
            self._write_state()
            self.lock.release()

    async def _main(self) -> int:
        cfg = self.config
        child = await self._spawn()
        pending = self.installs.state().pending_from
        if pending is not None:  # an upgrade made while the watchman was stopped
            child = await self._verify_switch(child, pending or None, None)
        while True:
            event = await self._next(child)
            if event == "stop":
                self.last_exit = await self._terminate(child, cfg.upgrade.drain_timeout)
                self.phase = "stopped"
                self.events.emit("WATCHMAN_STOP")
                return 0
            if isinstance(event, SwitchRequest):
                child = await self._switch(child, event)
                continue
            if event == "health":
                code = await self._terminate(child, cfg.health.kill_grace)
                fields: dict[str, str | int] = {"exit_code": code, "reason": "health"}
            else:
                assert isinstance(event, int)
                code, fields = event, {"exit_code": event}
            if code < 0:
                try:
                    fields["signal"] = signal.Signals(-code).name
                except ValueError:
                    fields["signal"] = str(-code)
            healthy_for = 0.0
            if child is not None and child.healthy_since is not None:
                healthy_for = time.monotonic() - child.healthy_since
            self.child, self.last_exit, self.health = None, code, "down"
            self.events.emit("WATCHMAN_CRASH", **fields)
            decision = self.budget.after_exit(healthy_for)
            if isinstance(decision, GiveUp):
                self.phase = "gave up"
                self.events.emit("WATCHMAN_GIVE_UP", restarts=decision.restarts)
                return EXIT_GAVE_UP
            self.phase = "backoff"
            self._write_state(next_restart=time.time() + decision.backoff)
            self.events.emit("WATCHMAN_RESTART", attempt=decision.attempt,
                             backoff=f"{decision.backoff:g}s")
            if await self._pause(decision.backoff):
                self.phase = "stopped"
                self.events.emit("WATCHMAN_STOP")
                return 0
            child = await self._spawn()

    # ------------------------------------------------------------------ the child

    async def _spawn(self) -> Child | None:
        """Start the node; ``None`` (logged) if it cannot even be started."""
        self.consecutive = 0
        self._health_kill.clear()
        try:
            argv = resolve_command(self.config, self.installs)
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=self.config.data_dir, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # its own process group: killed as a whole
            )
        except (ConfigError, OSError) as exc:
            print(f"error: cannot start the node: {exc}", file=sys.stderr, flush=True)
            self.child = None
            return None
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            create_time = 0.0
        child = Child(proc, asyncio.ensure_future(proc.wait()), time.monotonic(), time.time(),
                      create_time)
        self.child, self.phase, self.health = child, "running", "starting"
        self.node_version = None
        fields: dict[str, str | int] = {"pid": proc.pid}
        version = self.installs.state().current
        if version:
            fields["version"] = version
        self.events.emit("WATCHMAN_START", **fields)
        self._write_state()
        self._probe_wake.set()
        return child

    async def _next(self, child: Child | None) -> str | int | SwitchRequest:
        """What happens first: ``"stop"``, the child's exit code, ``"health"`` (kill it), or a
        switch request."""
        if child is None:
            if not self._requests.empty():
                return self._requests.get_nowait()
            return "stop" if self._stop.is_set() else SPAWN_FAILED
        stop = asyncio.ensure_future(self._stop.wait())
        kill = asyncio.ensure_future(self._health_kill.wait())
        request = asyncio.ensure_future(self._requests.get())
        waiters: list[asyncio.Future[Any]] = [stop, child.exit, kill, request]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (stop, kill, request):
                waiter.cancel()
        if stop.done() and not stop.cancelled():
            if request.done() and not request.cancelled():
                self._requests.put_nowait(request.result())
            return "stop"
        if request.done() and not request.cancelled():
            return request.result()
        if child.exit.done():
            return child.exit.result()
        return "health"

    async def _pause(self, seconds: float) -> bool:
        """Wait out a backoff; ``True`` if asked to stop meanwhile."""
        try:
            async with asyncio.timeout(seconds):
                await self._stop.wait()
            return True
        except TimeoutError:
            return self._stop.is_set()

    async def _terminate(self, child: Child | None, grace: float) -> int:
        """SIGTERM the node's process group (it drains), SIGKILL after ``grace``."""
        if child is None:
            return self.last_exit if self.last_exit is not None else SPAWN_FAILED
        self.phase = "stopping"
        if child.proc.returncode is None:
            _signal_group(child.proc.pid, signal.SIGTERM)
            _signal_group(child.proc.pid, signal.SIGCONT)  # a stopped node must see SIGTERM
            try:
                async with asyncio.timeout(grace):
                    await asyncio.shield(child.exit)
            except TimeoutError:
                _signal_group(child.proc.pid, signal.SIGKILL)
        code = await child.exit
        _signal_group(child.proc.pid, signal.SIGKILL)  # helpers the node left behind
        return code

    def _stop_orphan(self) -> None:
        """Stop a node left running by a watchman that was killed (``SIGKILL``, OOM)."""
        state = read_state(self.state_dir) or {}
        pid, created = state.get("node_pid"), state.get("node_create_time")
        if not isinstance(pid, int) or not isinstance(created, int | float):
            return
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) > 0.01:
                return
            print(f"stopping node pid {pid} left running by a previous watchman",
                  file=sys.stderr, flush=True)
            _signal_group(pid, signal.SIGTERM)
            proc.wait(self.config.upgrade.drain_timeout)
        except psutil.TimeoutExpired:
            _signal_group(pid, signal.SIGKILL)
        except psutil.Error:
            return

    # ------------------------------------------------------------------ health

    async def _health_loop(self) -> None:
        """Probe every ``health_interval`` (a probe's own time included), faster until a
        new node first answers."""
        while True:
            child = self.child
            fresh = child is not None and child.healthy_since is None
            period = self.config.health.health_interval
            if fresh:
                period = min(period, STARTUP_PROBE_INTERVAL)
            began = time.monotonic()
            await self._probe_once()
            try:  # a new node (``_spawn``) wakes the loop at once
                async with asyncio.timeout(max(0.0, period - (time.monotonic() - began))):
                    await self._probe_wake.wait()
            except TimeoutError:
                pass
            self._probe_wake.clear()

    async def _probe_once(self) -> None:
        cfg = self.config.health
        child = self.child
        if child is None or self.phase != "running" or child.proc.returncode is not None:
            return
        try:
            info = await self.link.health(timeout=cfg.health_interval)
        except NetworkError:
            info = None
        if child is not self.child or self.phase != "running" or child.exit.done():
            return
        now = time.monotonic()
        if info is not None:
            self._on_healthy(child, info, now)
            return
        if child.healthy_since is None and \
                now - child.started < self.config.upgrade.health_timeout:
            return  # still starting up
        self.consecutive += 1
        self.unhealthy = True
        self.health = "unhealthy"
        self.events.emit("WATCHMAN_HEALTH_FAIL", consecutive=self.consecutive)
        self._write_state()
        if self.consecutive >= cfg.health_fail_threshold:
            self.phase = "killing"
            self._health_kill.set()

    def _on_healthy(self, child: Child, info: dict[str, Any], now: float) -> None:
        first = child.healthy_since is None
        if first:
            child.healthy_since = now
        version = info.get("version")
        self.node_version = version if isinstance(version, str) else None
        attempt = self.budget.attempt
        assert child.healthy_since is not None
        self.budget.note_healthy(now - child.healthy_since)
        changed = first or self.consecutive or self.health != "healthy" or \
            attempt != self.budget.attempt
        self.consecutive, self.health = 0, "healthy"
        if changed:
            self._write_state()
        if self.unhealthy:
            self.unhealthy = False
            self.events.emit("WATCHMAN_HEALTH_RECOVER")
        if len(self.events.outbox):
            self._deliver.set()

    async def _await_healthy(self, child: Child | None, timeout: float) -> str | None:
        """``None`` once ``child`` answers a probe within ``timeout``; else why not."""
        if child is None:
            return "the node could not be started"
        self.phase = "verifying"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if child.exit.done():
                return f"the node exited with code {child.exit.result()}"
            if self._stop.is_set():
                return "the watchman was asked to stop"
            try:
                info = await self.link.health(timeout=max(0.1, min(2.0, deadline - loop.time())))
            except NetworkError:
                await asyncio.sleep(min(STARTUP_PROBE_INTERVAL, max(0.0, deadline - loop.time())))
                continue
            self.phase = "running"
            self._on_healthy(child, info, time.monotonic())
            return None
        return f"no healthy answer within {timeout:g} s"

    # ------------------------------------------------------------------ events

    def _on_event(self, event: WatchmanEvent) -> None:
        self._deliver.set()

    async def _delivery_loop(self) -> None:
        """Post queued events to the cockpit whenever the node is healthy."""
        while True:
            await self._deliver.wait()
            self._deliver.clear()
            child = self.child
            if child is None or child.healthy_since is None or self.consecutive:
                continue
            for path, body in self.events.outbox.pending():
                try:
                    await self.link.record(body, timeout=max(1.0, self.config.health
                                                             .health_interval))
                except CockpitRefused as exc:  # it will never take this one: drop it
                    print(f"warning: {body.get('event')} not recorded: {exc}",
                          file=sys.stderr, flush=True)
                except NetworkError:
                    break
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ switching

    def _take_requests(self) -> None:
        for request in control.take(self.state_dir, self._seen_requests):
            self._requests.put_nowait(request)

    async def _switch(self, child: Child | None, request: SwitchRequest) -> Child | None:
        cfg = self.config.upgrade
        state = self.installs.state()
        if request.action == "rollback":
            if state.previous is None or not self.installs.is_installed(state.previous):
                control.answer(self.state_dir, request, SwitchResult(
                    "failed", f"nothing to roll back to (previous: {state.previous})"))
                return child
            self.events.emit("UPGRADE_ROLLBACK", **{"from": state.current or "PATH",
                                                    "to": state.previous or "PATH"},
                             reason="operator")
            await self._terminate(child, cfg.drain_timeout)
            self.installs.activate(state.previous, verify=False)
            new = await self._spawn()
            control.answer(self.state_dir, request, SwitchResult("success"))
            return new
        version = request.version
        if request.action != "upgrade" or not version or not self.installs.is_installed(version):
            control.answer(self.state_dir, request, SwitchResult(
                "failed", f"knarr {version} is not installed"))
            return child
        self.events.emit("UPGRADE_START", **{"from": state.current or "PATH", "to": version})
        self.phase = "upgrading"
        await self._terminate(child, cfg.drain_timeout)
        self.installs.activate(version, verify=True)
        new = await self._spawn()
        return await self._verify_switch(new, state.current, request)

    async def _verify_switch(
        self, child: Child | None, back_to: str | None, request: SwitchRequest | None
    ) -> Child | None:
        """Keep a freshly switched version if it becomes healthy in time, else roll back."""
        current = self.installs.state().current
        why = await self._await_healthy(child, self.config.upgrade.health_timeout)
        if why is None:
            self.installs.confirm()
            self.events.emit("UPGRADE_SUCCESS", version=current or "PATH")
            if request is not None:
                control.answer(self.state_dir, request, SwitchResult("success"))
            return child
        self.events.emit("UPGRADE_ROLLBACK", **{"from": current or "PATH",
                                                "to": back_to or "PATH"}, reason=why)
        await self._terminate(child, self.config.health.kill_grace)
        self.installs.revert()
        old = await self._spawn()
        if request is not None:
            control.answer(self.state_dir, request, SwitchResult("rolled_back", why))
        return old

    async def _auto_upgrade_loop(self) -> None:
        """Every ``check_interval``, run ``upgrade`` in a child process (it signals back)."""
        assert self.config.path is not None
        argv = [sys.executable, "-m", "knarr.watchman.cli", "--config", str(self.config.path),
                "upgrade"]
        while True:
            await asyncio.sleep(self.config.upgrade.check_interval)
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL)
            try:
                await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await _quietly(proc.wait())

    # ------------------------------------------------------------------ state

    def _write_state(self, **extra: Any) -> None:
        child = self.child
        state: dict[str, Any] = {
            "watchman_pid": os.getpid(),
            "watchman_started": self.started_wall,
            "config": str(self.config.path) if self.config.path else None,
            "data_dir": str(self.config.data_dir),
            "phase": self.phase,
            "node_pid": child.proc.pid if child is not None else None,
            "node_create_time": child.create_time if child is not None else None,
            "node_started": child.started_wall if child is not None else None,
            "node_version": self.node_version,
            "install": self.installs.state().current,
            "health": self.health,
            "consecutive_failures": self.consecutive,
            "restarts": self.budget.total,
            "attempt": self.budget.attempt,
            "last_exit_code": self.last_exit,
            "updated": time.time(),
            **extra,
        }
        write_state(self.state_dir, state)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001 - best effort during shutdown
        pass
