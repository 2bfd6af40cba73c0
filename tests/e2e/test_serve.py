"""``knarr serve`` in a subprocess, as a user runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from knarr.node.store import Store
from tests.conftest import NodeFactory

KNARR = [sys.executable, "-m", "knarr.cli.main"]


async def _serve(*args: str, cwd: Path) -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    proc = await asyncio.create_subprocess_exec(
        *KNARR, "serve", *args, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    banner: dict[str, str] = {}
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        if not line:
            break
        key, _, value = line.partition(": ")
        banner[key] = value
    return proc, banner


async def test_serve_prints_identity_joins_and_stops_cleanly(
    make_node: NodeFactory, tmp_path: Path
) -> None:
    seed = await make_node()
    proc, banner = await _serve(
        "--host", "127.0.0.1", "--port", "0", "--storage", "n.db",
        "--bootstrap", f"127.0.0.1:{seed.port}", cwd=tmp_path,
    )
    try:
        node_id = banner["Node ID"]
        assert len(node_id) == 64 and int(node_id, 16) >= 0
        host, port = banner["Listening"].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        assert banner["Auto-detected advertise address"] == "127.0.0.1"
        assert "loopback" in banner["Warning"]
        assert await seed.dht.ping(("127.0.0.1", int(port)))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
    store = Store(tmp_path / "n.db")
    try:
        assert store.execute("SELECT count(*) FROM peers")[0][0] >= 1
    finally:
        store.close()


async def test_bad_bootstrap_flag_is_one_clear_line(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *KNARR, "serve", "--bootstrap", "not-an-address", cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --bootstrap"), lines


async def test_a_bridge_that_exits_at_once_stops_serve_with_one_clear_line(
    tmp_path: Path,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *KNARR, "serve", "--host", "127.0.0.1", "--port", "0", "--bootstrap", "",
        "--bridge", f"{sys.executable} -c pass", cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert err.decode().strip().splitlines()[-1].startswith(
        f"error: bridge '{sys.executable} -c pass': cannot start"
    )
    assert b"Traceback" not in err


async def test_sigterm_stops_a_start_up_that_waits_on_a_bridge(tmp_path: Path) -> None:
    # A server that reads its requests and never answers (it ends when stdin closes).
    silent = f"{sys.executable} -c 'import sys; sys.stdin.read()'"
    proc = await asyncio.create_subprocess_exec(
        *KNARR, "serve", "--host", "127.0.0.1", "--port", "0", "--bootstrap", "",
        "--bridge", silent, "--bridge-timeout", "600", cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    while not (await asyncio.wait_for(proc.stdout.readline(), 20)).startswith(b"Cockpit:"):
        pass  # the node is up; the bridge is (or is about to be) starting
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 20)  # not the bridge's 600 s
    assert proc.returncode == 0, err.decode()
    assert b"stopped during start-up" in err and b"Traceback" not in err


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--advertise-host", "bad host!"], "error: --advertise-host: expected a host name"),
        (["--host", "999.1.1.1"], "error: node.host: cannot resolve '999.1.1.1'"),
        (["--cockpit", "99999"], "error: --cockpit: expected a port 0..65535"),
        (["--bridge", '"unbalanced'], "error: bridge '\"unbalanced': No closing quotation"),
    ],
    ids=["advertise-host", "host", "cockpit-port", "bridge-quote"],
)
async def test_bad_flags_are_one_clear_line_before_anything_listens(
    tmp_path: Path, args: list[str], error: str
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *KNARR, "serve", "--port", "0", "--bootstrap", "", *args, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert err.decode().strip().splitlines() == [err.decode().strip()]  # one line
    assert err.decode().startswith(error), err.decode()
    assert b"Listening" not in out


async def test_a_udp_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *KNARR, "serve", "--host", "127.0.0.1", "--port", str(port), "--bootstrap", "",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert err.decode().strip() == (
        f"error: cannot listen on UDP 127.0.0.1:{port}: Address already in use"
    )


async def test_a_host_name_to_listen_on_is_resolved(tmp_path: Path) -> None:
    proc, banner = await _serve("--host", "localhost", "--port", "0", "--bootstrap", "",
                                cwd=tmp_path)
    try:
        assert banner["Listening"].startswith(("127.0.0.1:", "::1:"))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0 and b"Traceback" not in err


async def test_headless_log_lines_split_into_key_value_fields(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *KNARR, "serve", "--headless", "--host", "127.0.0.1", "--port", "0", "--bootstrap",
        "", cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines = []
    while not lines or "cockpit=" not in lines[-1]:
        lines.append((await asyncio.wait_for(proc.stderr.readline(), 20)).decode().strip())
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.communicate(), 20)
    fields = [dict(kv_pairs(line)) for line in lines]
    assert all(f["ts"].endswith("Z") and f["level"] in ("INFO", "WARNING") for f in fields)
    banner = {k: v for f in fields for k, v in f.items() if k not in ("ts", "level", "logger")}
    assert len(banner["node_id"]) == 64
    assert banner["cockpit"] == str(tmp_path / "cockpit.sock")
    assert banner["msg"] == f"node {banner['node_id'][:16]} listening on {banner['listening']}"


def kv_pairs(line: str) -> list[tuple[str, str]]:
    """``key=value`` fields, values bare or JSON-quoted (as the headless log writes them)."""
    import json
    import re

    return [(m[1], json.loads(m[2]) if m[2].startswith('"') else m[2])
            for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)]
