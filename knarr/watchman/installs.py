"""Knarr installs: one virtual environment per version under ``DATA_DIR/venvs``, and which
one is active, in ``DATA_DIR/watchman/installs.json``.

An upgrade never changes an environment in place: it creates a new one, so switching back
is instant and the node's data (which lives beside, not inside, these folders) is never
touched.

``KNARR_WATCHMAN_DEPS_FROM`` (a ``site-packages`` folder) makes new environments reuse
the dependencies installed there instead of downloading them: knarr and plugins are then
installed with ``pip --no-deps``. It is for hosts without a package index (and the test
suite); without it pip installs dependencies as usual, from ``--find-links`` beside the
wheel first, then the index.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from knarr.watchman.errors import InstallError
from knarr.watchman.events import write_atomic
from knarr.watchman.versions import parse_version

DEPS_ENV = "KNARR_WATCHMAN_DEPS_FROM"
MARKER = "knarr-install.json"
PIP_TIMEOUT = 900.0


@dataclass(frozen=True)
class InstallState:
    """Which installed version runs, which ran before, and an unconfirmed switch."""

    current: str | None = None
    """The active version; ``None`` = the node command is found on ``PATH``."""
    previous: str | None = None
    pending_from: str | None = None
    """Set while a switch to ``current`` waits for its first health check: the version
    (or ``""`` for the ``PATH`` install) to roll back to if it fails."""
    pending_previous: str | None = None
    """``previous`` as it was before the unconfirmed switch, restored by a revert."""
    failed: tuple[str, ...] = ()
    """Versions rolled back after failing their health check (not offered again)."""


class Installs:
    """The versioned environments of one data folder."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.root = data_dir / "venvs"
        self.file = data_dir / "watchman" / "installs.json"

    # -------------------------------------------------------------- which is active

    def state(self) -> InstallState:
        try:
            raw = json.loads(self.file.read_bytes())
        except FileNotFoundError:
            return InstallState()
        except (OSError, ValueError) as exc:
            raise InstallError(f"{self.file}: unreadable ({exc}); remove it to start over"
                               ) from None
        return InstallState(
            current=raw.get("current"), previous=raw.get("previous"),
            pending_from=raw.get("pending_from"), pending_previous=raw.get("pending_previous"),
            failed=tuple(raw.get("failed", ())),
        )

    def save(self, state: InstallState) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.file, json.dumps(asdict(state), indent=2).encode(), 0o644)

    def activate(self, version: str | None, *, verify: bool) -> InstallState:
        """Make ``version`` current; with ``verify``, until :meth:`confirm` or :meth:`revert`."""
        state = self.state()
        if version is not None and not self.is_installed(version):
            raise InstallError(f"knarr {version} is not installed in {self.root}")
        new = InstallState(
            current=version, previous=state.current,
            pending_from=(state.current or "") if verify else None,
            pending_previous=state.previous if verify else None,
            failed=tuple(v for v in state.failed if v != version),
        )
        self.save(new)
        return new

    def confirm(self) -> None:
        self.save(replace(self.state(), pending_from=None, pending_previous=None))

    def revert(self) -> InstallState:
        """Undo an unconfirmed switch: the failed version is remembered, the old one is back."""
        state = self.state()
        if state.pending_from is None:
            return state
        back = state.pending_from or None
        failed = state.failed + ((state.current,) if state.current else ())
        new = InstallState(current=back, previous=state.pending_previous, failed=failed)
        self.save(new)
        return new

    # -------------------------------------------------------------- environments

    def venv(self, version: str) -> Path:
        return self.root / f"knarr-{version}"

    def python(self, version: str) -> Path:
        return self.venv(version) / "bin" / "python"

    def is_installed(self, version: str) -> bool:
        return (self.venv(version) / MARKER).is_file()

    def installed(self) -> list[str]:
        """Installed versions, oldest first."""
        if not self.root.is_dir():
            return []
        versions = [p.name.removeprefix("knarr-") for p in self.root.iterdir()
                    if (p / MARKER).is_file()]
        return sorted(versions, key=parse_version)

    def bin_dir(self) -> Path | None:
        """The active environment's ``bin``, where the node command is looked up first."""
        current = self.state().current
        return self.venv(current) / "bin" if current else None

    async def install(self, version: str, wheel: Path) -> Path:
        """A new environment for ``version`` with ``wheel`` installed (reused if present)."""
        if self.is_installed(version):
            return self.venv(version)
        venv = self.venv(version)
        if venv.exists():
            shutil.rmtree(venv)  # a half-made environment from an install that died
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            await create_venv(venv)
            await pip_install(venv / "bin" / "python", [str(wheel)],
                              find_links=wheel.parent)
            found = await run_tool([str(venv / "bin" / "python"), "-c",
                                "import importlib.metadata as m, knarr.cli.main; "
                                "print(m.version('knarr'))"], what="checking the install", cwd=venv)
            if found.strip() != version:
                raise InstallError(f"{wheel.name} installed knarr {found.strip()!r}, "
                                   f"expected {version}")
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        (venv / MARKER).write_text(json.dumps({
            "version": version, "wheel": wheel.name, "installed": time.time()}) + "\n")
        return venv

    def remove(self, version: str) -> None:
        shutil.rmtree(self.venv(version), ignore_errors=True)


def deps_from() -> Path | None:
    value = os.environ.get(DEPS_ENV, "").strip()
    return Path(value) if value else None


async def create_venv(venv: Path) -> None:
    """``python -m venv`` with this interpreter (3.11+, so fit for knarr)."""
    shared = deps_from()
    args = [sys.executable, "-m", "venv"]
    if shared is not None:
        args.append("--without-pip")  # pip is run from here with --python
    await run_tool([*args, str(venv)], what=f"creating the virtual environment {venv}")
    if shared is not None:
        site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / \
            "site-packages"
        site.mkdir(parents=True, exist_ok=True)
        (site / "_knarr_watchman_deps.pth").write_text(f"{shared}\n")


async def pip_install(
    python: Path, requirements: list[str], *, find_links: Path | None = None
) -> None:
    """``pip install`` into the environment of ``python``; one clear line if it fails."""
    await run_tool(pip_command(python, ["install", *(
        ["--find-links", str(find_links)] if find_links is not None and deps_from() is None
        else []), *requirements]), what="pip install " + " ".join(
            Path(r).name for r in requirements))


async def pip_uninstall(python: Path, project: str) -> None:
    await run_tool(pip_command(python, ["uninstall", "--yes", project]),
               what=f"pip uninstall {project}")


def pip_command(python: Path, args: list[str]) -> list[str]:
    common = ["--disable-pip-version-check", "--no-input", "--quiet"]
    if deps_from() is not None:
        extra = ["--no-deps", "--no-index"] if args[0] == "install" else []
        return [sys.executable, "-m", "pip", "--python", str(python), args[0], *common,
                *extra, *args[1:]]
    return [str(python), "-m", "pip", args[0], *common, *args[1:]]


async def run_tool(argv: list[str], *, what: str, cwd: Path | None = None) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=cwd,
        )
    except OSError as exc:
        raise InstallError(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        async with asyncio.timeout(PIP_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise InstallError(f"{what}: no result after {PIP_TIMEOUT:g} s") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.lower().startswith("error")] or lines or ["(no output)"]
        raise InstallError(f"{what} failed: {errors[-1][:300]}")
    return out.decode("utf-8", "replace")
