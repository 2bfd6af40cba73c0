"""``knarr-watchman run`` supervising a real node: crashes, hangs, backoff, give-up,
status and stop from another process, and the events in the node's cockpit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from knarr.cli.cockpit_client import cockpit_request
from tests.watchman.conftest import Watchman, health, run_cli, state, wait_until, watchman_toml

Start = Callable[[Path], Awaitable[Watchman]]


async def _healthy_node(w: Watchman, data_dir: Path) -> int:
    """Wait for the node to answer /health; its pid."""
    await wait_until(lambda: health(data_dir), what="node healthy")
    await wait_until(lambda: state(data_dir).get("health") == "healthy", what="state healthy")
    pid = state(data_dir)["node_pid"]
    assert isinstance(pid, int)
    return pid


async def test_sigkilled_node_is_restarted_and_events_reach_its_cockpit(
    data_dir: Path, watchmen: Start
) -> None:
    w = await watchmen(watchman_toml(data_dir))
    await w.wait_line("WATCHMAN_START pid=")
    pid = await _healthy_node(w, data_dir)

    os.kill(pid, signal.SIGKILL)
    crash = await w.wait_line("WATCHMAN_CRASH")
    assert w.lines[crash] == "WATCHMAN_CRASH exit_code=-9 signal=SIGKILL"
    assert await w.line(crash + 1) == "WATCHMAN_RESTART attempt=1 backoff=0s"
    start = await w.wait_line("WATCHMAN_START pid=", after=crash)
    new_pid = int(w.lines[start].split("pid=")[1])
    assert new_pid != pid
    await wait_until(lambda: state(data_dir).get("node_pid") == new_pid and
                     state(data_dir).get("health") == "healthy", what="restarted node healthy")
    assert (await health(data_dir) or {}).get("status") == "ok"

    # The crash happened while the node was down; it reaches the new node's journal.
    async def journal_has_crash() -> bool:
        events = await cockpit_request(data_dir / "cockpit.sock", "GET", "/v1/watchman")
        return {"WATCHMAN_CRASH", "WATCHMAN_RESTART"} <= {e["event"] for e in events}

    await wait_until(journal_has_crash, what="crash and restart in /v1/watchman")
    events = await cockpit_request(data_dir / "cockpit.sock", "GET", "/v1/watchman")
    crashes = [e for e in events if e["event"] == "WATCHMAN_CRASH"]
    assert len(crashes) == 1  # delivered once
    crash_event = crashes[0]
    assert crash_event["exit_code"] == -9 and crash_event["at"] <= crash_event["time"]
    assert crash_event["detail"] == "exit_code=-9 signal=SIGKILL"
    st = state(data_dir)
    assert st["restarts"] == 1 and st["last_exit_code"] == -9


async def test_hung_node_is_detected_killed_and_restarted(
    data_dir: Path, watchmen: Start
) -> None:
    w = await watchmen(watchman_toml(data_dir))
    pid = await _healthy_node(w, data_dir)

    os.kill(pid, signal.SIGSTOP)
    first = await w.wait_line("WATCHMAN_HEALTH_FAIL consecutive=1")
    crash = await w.wait_line("WATCHMAN_CRASH", after=first)
    assert w.lines[first:crash] == [f"WATCHMAN_HEALTH_FAIL consecutive={n}" for n in (1, 2, 3)]
    # SIGTERM + SIGCONT: the stopped node wakes and shuts down (or is SIGKILLed later).
    assert "reason=health" in w.lines[crash]
    assert (await w.line(crash + 1)).startswith("WATCHMAN_RESTART attempt=1")
    await w.wait_line("WATCHMAN_HEALTH_RECOVER", after=crash)
    new_pid = state(data_dir)["node_pid"]
    assert new_pid != pid and state(data_dir)["health"] == "healthy"


async def test_backoff_doubles_to_the_cap_then_gives_up(data_dir: Path, watchmen: Start) -> None:
    config = watchman_toml(
        data_dir, args=["-c", "import sys; sys.exit(7)"],
        recovery={"max_restarts": 4, "initial_backoff": 0.05, "max_backoff": 0.15},
    )
    w = await watchmen(config)
    assert await w.wait_exit() == 3
    assert [ln for ln in w.lines if not ln.startswith("WATCHMAN_START")] == [
        "WATCHMAN_CRASH exit_code=7",
        "WATCHMAN_RESTART attempt=1 backoff=0.05s",
        "WATCHMAN_CRASH exit_code=7",
        "WATCHMAN_RESTART attempt=2 backoff=0.1s",
        "WATCHMAN_CRASH exit_code=7",
        "WATCHMAN_RESTART attempt=3 backoff=0.15s",
        "WATCHMAN_CRASH exit_code=7",
        "WATCHMAN_RESTART attempt=4 backoff=0.15s",
        "WATCHMAN_CRASH exit_code=7",
        "WATCHMAN_GIVE_UP restarts=4",
    ]
    assert sum(ln.startswith("WATCHMAN_START") for ln in w.lines) == 5
    # The give-up waits in the outbox for the next healthy node.
    outbox = sorted((data_dir / "watchman" / "outbox").iterdir())
    assert json.loads(outbox[-1].read_text())["event"] == "WATCHMAN_GIVE_UP"
    code, out, _ = await run_cli("--config", str(config), "status", "--json")
    assert code == 3
    status = json.loads(out)
    assert status["watchman"]["running"] is False and status["last_exit_code"] == 7


async def test_status_and_stop_from_another_process_and_a_second_watchman_is_refused(
    data_dir: Path, watchmen: Start
) -> None:
    config = watchman_toml(data_dir)
    w = await watchmen(config)
    node_pid = await _healthy_node(w, data_dir)

    code, out, err = await run_cli("--config", str(config), "status", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["watchman"]["pid"] == w.proc.pid if w.proc else False
    assert status["node"]["pid"] == node_pid
    assert status["node"]["version"] == "0.1.0" and status["health"] == "healthy"
    assert status["restarts"] == 0 and status["last_exit_code"] is None
    assert status["node"]["memory_rss"] > 10 << 20
    assert status["watchman"]["memory_rss"] > 0 and "cpu_percent" in status["node"]
    code, out, _ = await run_cli("--config", str(config), "status")
    assert code == 0
    table = dict(line.split(None, 1) if not line.startswith(("Data dir", "Last exit"))
                 else line.rsplit("  ", 1) for line in out.splitlines())
    assert table["Health"].strip() == "healthy" and f"pid {node_pid}" in table["Node"]

    code, out, err = await run_cli("--data-dir", str(data_dir), "run", timeout=30)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "already running" in err, err

    code, out, err = await run_cli("--config", str(config), "stop")
    assert code == 0 and "Stopped the watchman" in out, err
    assert await w.wait_exit() == 0
    assert w.lines[-1] == "WATCHMAN_STOP"
    assert await health(data_dir) is None
    await wait_until(lambda: not _alive(node_pid), what="node gone")
    code, out, _ = await run_cli("--config", str(config), "stop")
    assert code == 0 and "No watchman is running" in out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_healthy_run_resets_the_restart_count(data_dir: Path, watchmen: Start) -> None:
    w = await watchmen(watchman_toml(data_dir, recovery={"backoff_reset_uptime": 0.3}))
    for _ in range(2):
        pid = await _healthy_node(w, data_dir)
        await wait_until(lambda: state(data_dir).get("attempt") == 0, what="count reset")
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda p=pid: state(data_dir).get("node_pid") not in (p, None),
                         what="restarted")
    restarts = [ln for ln in w.lines if ln.startswith("WATCHMAN_RESTART")]
    assert restarts == ["WATCHMAN_RESTART attempt=1 backoff=0s"] * 2


async def test_bad_inputs_are_one_clear_line(data_dir: Path) -> None:
    missing = data_dir / "nope.toml"
    code, out, err = await run_cli("--config", str(missing), "run")
    assert code == 1 and err.count("\n") == 1 and "file not found" in err, err

    bad = data_dir / "bad.toml"
    bad.write_text("[health]\nhealth_interval = -1\n")
    code, _, err = await run_cli("--config", str(bad), "status")
    assert (code, err) == (1, f"error: {bad}: health.health_interval: expected a number > 0 "
                              "(seconds), got -1\n")
    bad.write_text("[recovery]\nmax_restart = 3\n")
    code, _, err = await run_cli("--config", str(bad), "run")
    assert code == 1 and 'recovery.max_restart: unknown key; did you mean ' \
        '"recovery.max_restarts"?' in err and err.count("\n") == 1

    config = watchman_toml(data_dir, command="knarr-no-such-command")
    code, _, err = await run_cli("--config", str(config), "run")
    assert code == 1 and err.count("\n") == 1 and "node.command" in err and \
        "knarr-no-such-command" in err, err

    # A cockpit URL where nothing listens: status says so in one line, no traceback.
    config = watchman_toml(data_dir, health={"cockpit_url": "http://127.0.0.1:9"})
    code, out, err = await run_cli("--config", str(config), "status")
    assert code == 3 and err == ""
    line = next(ln for ln in out.splitlines() if ln.startswith("Health"))
    assert "unreachable" in line and "127.0.0.1:9" in line


async def test_watchman_never_imports_textual_or_aiohttp() -> None:
    code = ("import sys, knarr.watchman.cli, knarr.watchman.supervisor, knarr.watchman.status\n"
            "print(sorted(m for m in ('textual', 'aiohttp') if m in sys.modules))")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert out.decode().strip() == "[]"


async def test_probes_over_tcp_with_the_nodes_token(data_dir: Path, watchmen: Start) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from tests.watchman.conftest import NODE_ARGS

    config = watchman_toml(
        data_dir, args=[*NODE_ARGS, "--data-dir", str(data_dir), "--cockpit", str(port)],
        health={"cockpit_url": f"http://127.0.0.1:{port}"})
    w = await watchmen(config)
    await _healthy_node(w, data_dir)
    assert (data_dir / "cockpit.token").is_file()
    code, out, err = await run_cli("--config", str(config), "status", "--json")
    assert code == 0, err
    assert json.loads(out)["node"]["version"] == "0.1.0"

    async def start_recorded() -> bool:  # delivered over TCP with the token, too
        events = await cockpit_request(data_dir / "cockpit.sock", "GET", "/v1/watchman")
        return any(e["event"] == "WATCHMAN_START" for e in events)

    await wait_until(start_recorded, what="WATCHMAN_START in /v1/watchman")
