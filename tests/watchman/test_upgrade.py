"""Staged upgrades of a running node from a loopback release server (GitHub API shape):
install, drain, swap, health check, automatic rollback; bad releases leave the node be.

The wheels are this repository's real ``knarr`` source stamped with other versions (see
``wheels.py``), so every version under test is the real node; the broken 0.3.0 has a
``knarr`` command that exits at once, so it can never become healthy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from knarr.cli.cockpit_client import cockpit_request
from knarr.watchman.installs import Installs
from tests.watchman.conftest import Watchman, health, run_cli, state, wait_until, watchman_toml
from tests.watchman.release_server import ReleaseServer
from tests.watchman.wheels import knarr_wheel

pytestmark = pytest.mark.slow

BROKEN_MAIN = "import sys\n\n\ndef main(argv=None):\n    sys.exit(4)\n"
Start = Callable[[Path], Awaitable[Watchman]]


@pytest.fixture
async def releases(tmp_path: Path) -> AsyncIterator[ReleaseServer]:
    server = ReleaseServer()
    await server.start()
    wheels = tmp_path / "wheels"
    server.add("v0.1.0", knarr_wheel(wheels / "a", "0.1.0"))
    server.add("v0.2.0", knarr_wheel(wheels / "b", "0.2.0"), checksum=None)
    server.add("v0.3.0", knarr_wheel(wheels / "c", "0.3.0", {"knarr/cli/main.py": BROKEN_MAIN}))
    server.add("v0.4.0", knarr_wheel(wheels / "d", "0.4.0"), checksum="wrong")
    yield server
    await server.stop()


def _config(data_dir: Path, server: ReleaseServer) -> Path:
    args = ["serve", "--data-dir", str(data_dir), "--headless", "--host", "127.0.0.1",
            "--port", "0", "--bootstrap", "", "--log-level", "WARNING"]
    return watchman_toml(data_dir, command="knarr", args=args, upgrade={
        "source": "github:knarrnet/knarr", "github_api": server.url,
        "drain_timeout": 10, "health_timeout": 20})


async def _version(data_dir: Path) -> str | None:
    body = await health(data_dir)
    return body.get("version") if body else None


async def test_upgrade_then_automatic_rollback_then_operator_rollback(
    data_dir: Path, releases: ReleaseServer, watchmen: Start
) -> None:
    config = _config(data_dir, releases)
    # Stopped node: the switch is recorded, and checked when the watchman starts.
    code, out, err = await run_cli("--config", str(config), "upgrade", "--tag", "v0.1.0")
    assert code == 0, err
    assert "SHA-256 verified" in out and "next `knarr-watchman run`" in out
    w = await watchmen(config)
    await w.wait_line("UPGRADE_SUCCESS version=0.1.0")
    assert await _version(data_dir) == "0.1.0"
    node_id = (await health(data_dir) or {})["node_id"]

    releases.latest = "v0.2.0"
    code, out, err = await run_cli("--config", str(config), "upgrade")
    assert code == 0, (out, err)
    assert "no checksums.txt published" in out and "Upgraded to knarr 0.2.0" in out
    start = await w.wait_line("UPGRADE_START from=0.1.0 to=0.2.0")
    await w.wait_line("UPGRADE_SUCCESS version=0.2.0", after=start)
    assert await _version(data_dir) == "0.2.0"
    assert (await health(data_dir) or {})["node_id"] == node_id  # same data, same identity

    releases.latest = "v0.3.0"
    code, out, err = await run_cli("--config", str(config), "upgrade")
    assert code == 1 and "Rolled back to 0.2.0" in out, (out, err)
    rollback = await w.wait_line("UPGRADE_ROLLBACK from=0.3.0 to=0.2.0")
    assert "exited with code 4" in w.lines[rollback]
    await wait_until(lambda: state(data_dir).get("health") == "healthy")
    assert await _version(data_dir) == "0.2.0"
    installs = Installs(data_dir).state()
    assert (installs.current, installs.previous, installs.failed) == ("0.2.0", "0.1.0",
                                                                      ("0.3.0",))
    # The failed version is not retried automatically (auto_upgrade would loop otherwise).
    code, out, _ = await run_cli("--config", str(config), "upgrade")
    assert code == 0 and "failed its health check here before" in out

    async def journal() -> set[str]:
        events = await cockpit_request(data_dir / "cockpit.sock", "GET", "/v1/watchman")
        return {e["event"] for e in events}

    async def upgrades_recorded() -> bool:
        return {"UPGRADE_START", "UPGRADE_SUCCESS", "UPGRADE_ROLLBACK"} <= await journal()

    await wait_until(upgrades_recorded, what="upgrade events in the cockpit")

    code, out, err = await run_cli("--config", str(config), "rollback")
    assert code == 0 and "Rolled back from 0.2.0 to knarr 0.1.0" in out, (out, err)
    await w.wait_line("UPGRADE_ROLLBACK from=0.2.0 to=0.1.0 reason=operator")
    await wait_until(lambda: state(data_dir).get("health") == "healthy")
    assert await _version(data_dir) == "0.1.0"


async def test_bad_releases_are_one_line_and_leave_the_node_running(
    data_dir: Path, releases: ReleaseServer, watchmen: Start
) -> None:
    config = _config(data_dir, releases)
    code, _, err = await run_cli("--config", str(config), "upgrade", "--tag", "v0.2.0")
    assert code == 0, err
    w = await watchmen(config)
    await w.wait_line("UPGRADE_SUCCESS version=0.2.0")
    await wait_until(lambda: state(data_dir).get("health") == "healthy")
    pid = state(data_dir)["node_pid"]
    lines = len(w.lines)

    code, out, err = await run_cli("--config", str(config), "upgrade", "--tag", "v0.4.0")
    assert code == 1 and err.count("\n") == 1
    assert "checksum mismatch for knarr-0.4.0-py3-none-any.whl" in err, err
    assert not Installs(data_dir).is_installed("0.4.0")

    releases.garbage = True
    code, out, err = await run_cli("--config", str(config), "upgrade")
    assert code == 1 and err.count("\n") == 1 and "not a GitHub release" in err, err
    code, out, err = await run_cli("--config", str(config), "upgrade", "--tag", "v0.2.1")
    assert code == 1 and err.count("\n") == 1 and "not a GitHub release" in err, err
    releases.garbage = False
    code, out, err = await run_cli("--config", str(config), "upgrade", "--tag", "v9.9.9")
    assert code == 1 and err.count("\n") == 1 and "not found" in err, err

    corrupt = data_dir / "corrupt"
    corrupt.mkdir()
    (corrupt / "knarr-0.5.0-py3-none-any.whl").write_bytes(b"PK\x03\x04 truncated")
    folder = watchman_toml(data_dir, command="knarr", upgrade={"source": str(corrupt)},
                           name="folder.toml")
    code, out, err = await run_cli("--config", str(folder), "upgrade")
    assert code == 1 and err.count("\n") == 1 and "is corrupt" in err, err

    assert state(data_dir)["node_pid"] == pid and w.lines[lines:] == []
    assert (await health(data_dir) or {}).get("status") == "ok"


async def test_auto_upgrade_picks_up_a_new_release(
    data_dir: Path, releases: ReleaseServer, watchmen: Start
) -> None:
    config = _config(data_dir, releases)
    code, _, err = await run_cli("--config", str(config), "upgrade", "--tag", "v0.1.0")
    assert code == 0, err
    text = config.read_text().replace("[upgrade]\n", "[upgrade]\nauto_upgrade = true\n"
                                      "check_interval = 0.5\n")
    config.write_text(text)
    w = await watchmen(config)
    await w.wait_line("UPGRADE_SUCCESS version=0.1.0")
    releases.latest = "v0.2.0"
    start = await w.wait_line("UPGRADE_START from=0.1.0 to=0.2.0")
    await w.wait_line("UPGRADE_SUCCESS version=0.2.0", after=start)
    assert await _version(data_dir) == "0.2.0"
