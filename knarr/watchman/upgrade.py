"""``upgrade`` and ``rollback`` as commands: everything that can fail slowly (finding the
release, downloading, checking, installing into a new environment, installing enabled
plugins into it) happens here, before the running node is touched. Then the running
watchman is asked to drain, swap and health-check (see :mod:`knarr.watchman.control`);
with no watchman running, the switch is recorded and checked at the next ``run``.
"""

from __future__ import annotations

import os

from knarr.watchman import control
from knarr.watchman.config import WatchmanConfig
from knarr.watchman.errors import InstallError, WatchmanError
from knarr.watchman.events import EventLog, Outbox, say
from knarr.watchman.installs import Installs
from knarr.watchman.lock import WatchmanLock, running_pid
from knarr.watchman.plugins import install_plugin, load_plugins, manifest_path
from knarr.watchman.releases import open_source
from knarr.watchman.versions import parse_version

TOKEN_ENV = "GITHUB_TOKEN"
TOKEN_FILE = "github.token"


def github_token(config: WatchmanConfig) -> str | None:
    """``$GITHUB_TOKEN``, else the token ``init --github-token`` saved."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    try:
        return (config.state_dir / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def _switch_timeout(config: WatchmanConfig) -> float:
    return (config.upgrade.drain_timeout + config.upgrade.health_timeout
            + 2 * config.health.kill_grace + 60.0)


async def upgrade(config: WatchmanConfig, tag: str | None) -> int:
    """Install the latest release (or ``tag``) and switch the node to it."""
    installs = Installs(config.data_dir)
    state = installs.state()
    source = open_source(config.upgrade.source, github_api=config.upgrade.github_api,
                         token=github_token(config))
    release = await (source.tagged("knarr", tag) if tag else source.latest("knarr"))
    current = state.current
    if current is not None:
        if parse_version(release.version) == parse_version(current):
            say(f"knarr {current} is already the active version")
            return 0
        if tag is None and parse_version(release.version) < parse_version(current):
            say(f"knarr {current} is newer than the latest release ({release.version}); "
                  "nothing to do")
            return 0
    if tag is None and release.version in state.failed:
        say(f"knarr {release.version} failed its health check here before; not trying it "
              f"again automatically (use --tag {release.tag} to insist)")
        return 0
    wheel = await source.fetch(release, config.state_dir / "downloads")
    checked = "SHA-256 verified" if release.checksums_location else "no checksums.txt published"
    say(f"Fetched {wheel.name} from {source.name} ({checked})")
    fresh = not installs.is_installed(release.version)
    venv = await installs.install(release.version, wheel)
    try:
        for plugin in load_plugins(manifest_path(config)).values():
            if plugin.enabled:
                version = await install_plugin(config, plugin, venv / "bin" / "python",
                                               token=github_token(config))
                say(f"Installed plugin {plugin.name} {version} into knarr {release.version}")
    except WatchmanError as exc:
        if fresh:
            installs.remove(release.version)
        raise InstallError(f"upgrade to {release.version} abandoned, the node is unchanged: "
                           f"{exc}") from None
    say(f"Installed knarr {release.version} in {venv}")
    pid = running_pid(config.state_dir)
    if pid is not None:
        request_id = control.submit(config.state_dir, pid, "upgrade", release.version)
        say(f"Switching the running node from {current or 'PATH'} to {release.version} "
              f"(drain up to {config.upgrade.drain_timeout:g} s)...")
        result = await control.wait_answer(config.state_dir, request_id, pid,
                                           _switch_timeout(config))
        if result.outcome == "success":
            say(f"Upgraded to knarr {release.version}")
            return 0
        say(f"Rolled back to {current or 'PATH'}: knarr {release.version} {result.detail}")
        return 1
    with WatchmanLock(config.state_dir) as lock:
        lock.acquire("an upgrade")
        EventLog(Outbox(config.state_dir / "outbox")).emit(
            "UPGRADE_START", **{"from": current or "PATH", "to": release.version})
        installs.activate(release.version, verify=True)
    say(f"Switched to knarr {release.version}; the next `knarr-watchman run` starts it and "
          f"rolls back if it is not healthy within {config.upgrade.health_timeout:g} s")
    return 0


async def rollback(config: WatchmanConfig) -> int:
    """Switch back to the version that ran before the last switch."""
    installs = Installs(config.data_dir)
    state = installs.state()
    if state.previous is None:
        raise WatchmanError("nothing to roll back to: no earlier version is recorded in "
                            f"{installs.file}")
    if state.previous not in installs.installed():
        raise WatchmanError(f"knarr {state.previous} is no longer installed in {installs.root}")
    pid = running_pid(config.state_dir)
    if pid is not None:
        request_id = control.submit(config.state_dir, pid, "rollback")
        result = await control.wait_answer(config.state_dir, request_id, pid,
                                           _switch_timeout(config))
        if result.outcome != "success":
            raise WatchmanError(f"rollback failed: {result.detail}")
    else:
        with WatchmanLock(config.state_dir) as lock:
            lock.acquire("a rollback")
            EventLog(Outbox(config.state_dir / "outbox")).emit(
                "UPGRADE_ROLLBACK", **{"from": state.current or "PATH", "to": state.previous},
                reason="operator")
            installs.activate(state.previous, verify=False)
    say(f"Rolled back from {state.current or 'PATH'} to knarr {state.previous}")
    return 0
