"""A second ``knarr serve`` in a running node's folder, as a user might start one."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from knarr.cli.cockpit_client import cockpit_request
from tests.e2e.cli import free_port

KNARR = [sys.executable, "-m", "knarr.cli.main"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


async def test_a_second_serve_in_the_folder_is_one_clear_line_and_harms_nothing(
    tmp_path: Path,
) -> None:
    first = await asyncio.create_subprocess_exec(
        *KNARR, "serve", "--host", "127.0.0.1", "--port", "0", "--bootstrap", "",
        cwd=tmp_path, env=ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert first.stdout is not None
    try:
        banner: dict[str, str] = {}
        while line := (await asyncio.wait_for(first.stdout.readline(), 20)).decode().strip():
            key, _, value = line.partition(": ")
            banner[key] = value
        second = await asyncio.create_subprocess_exec(
            *KNARR, "serve", "--host", "127.0.0.1", "--port", str(free_port()),
            "--bootstrap", "", cwd=tmp_path, env=ENV,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(second.communicate(), 20)
        assert second.returncode == 1
        lines = err.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        assert "another knarr node" in lines[0] and str(tmp_path) in lines[0]
        assert not out.strip()
        health = await cockpit_request(tmp_path / "cockpit.sock", "GET", "/health")
        assert health["node_id"] == banner["Node ID"]
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(first.communicate(), 20)
    assert first.returncode == 0, err.decode()
    assert not (tmp_path / "cockpit.sock").exists()
