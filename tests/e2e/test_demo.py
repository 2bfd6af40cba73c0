"""``knarr demo``, as the README's first command runs it: a network on loopback that
stops by itself and leaves nothing behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.e2e.cli import knarr

pytestmark = pytest.mark.slow


def _demo_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("knarr-demo-*"))


def test_the_demo_runs_and_removes_its_folders() -> None:
    before = _demo_folders()
    out = knarr("demo", "--nodes", "3", "--seconds", "3", "--no-console", timeout=60)
    assert out.returncode == 0, out.stderr
    first, *_, last = out.stdout.strip().splitlines()
    assert first.startswith("Demo network: 3 nodes on 127.0.0.1; console socket ")
    assert last == "Demo stopped; temporary folders removed."
    socket_path = Path(first.rsplit(" ", 1)[1])
    assert not socket_path.parent.exists()
    assert _demo_folders() <= before  # every node's folder is gone
    assert "Traceback" not in out.stderr
