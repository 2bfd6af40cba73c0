"""Plugins from ``DATA_DIR/watchman/plugins.toml``, installed into the node's environment.

::

    [plugins.bcw]
    source = "github:knarrnet/knarr-bcw"   # or a wheel file, or a project folder
    version = ">=1.0.0"                    # optional; "" = any
    enabled = true                         # optional; default true
    package = "knarr-bcw"                  # optional; the distribution name, when it
                                           # cannot be told from the source

Installing runs pip once; pip resolves and unpacks everything before it changes the
environment and puts back what it removed if installing fails, and the node is not
restarted, so a plugin that fails to install leaves the node as it was.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knarr.errors import ConfigError
from knarr.watchman.config import WatchmanConfig
from knarr.watchman.errors import InstallError, ReleaseError
from knarr.watchman.events import write_atomic
from knarr.watchman.installs import Installs, pip_install, pip_uninstall, run_tool
from knarr.watchman.releases import GitHubReleases, check_wheel
from knarr.watchman.supervisor import resolve_command
from knarr.watchman.versions import check_specifier, normalize, parse_wheel_name, satisfies

MANIFEST = "plugins.toml"
_KEYS = ("source", "version", "enabled", "package")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Plugin:
    name: str
    source: str
    """``github:owner/repo``, or an absolute path (wheel or folder)."""
    version: str = ""
    enabled: bool = True
    package: str = ""
    """The distribution's name, as pip knows it."""


def manifest_path(config: WatchmanConfig) -> Path:
    return config.state_dir / MANIFEST


def load_plugins(path: Path) -> dict[str, Plugin]:
    """The manifest (empty if the file does not exist); errors name the file and key."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for key in data:
        if key != "plugins":
            raise ConfigError(f'{path}: {key}: unknown section; expected "plugins"')
    table = data.get("plugins", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: plugins: expected a table")
    out: dict[str, Plugin] = {}
    for name, entry in table.items():
        out[name] = _parse_plugin(path, name, entry)
    return out


def _parse_plugin(path: Path, name: str, entry: Any) -> Plugin:
    where = f"{path}: plugins.{name}"
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}: a plugin name is letters, digits, - and _")
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table")
    for key in entry:
        if key not in _KEYS:
            raise ConfigError(f"{where}.{key}: unknown key; expected one of "
                              f"{', '.join(map(json.dumps, _KEYS))}")
    source = entry.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f'{where}.source: missing; expected "github:owner/repo", a wheel '
                          "or a folder")
    if not source.startswith("github:"):
        source = str((path.parent.parent / Path(source).expanduser()).resolve())
    elif not re.fullmatch(r"github:[\w.-]+/[\w.-]+", source):
        raise ConfigError(f'{where}.source: expected "github:owner/repo", got {source!r}')
    version = entry.get("version", "")
    if not isinstance(version, str):
        raise ConfigError(f'{where}.version: expected a string like ">=1.0.0"')
    try:
        check_specifier(version)
    except ValueError as exc:
        raise ConfigError(f"{where}.version: {exc}") from None
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}.enabled: expected true or false")
    package = entry.get("package", "")
    if not isinstance(package, str):
        raise ConfigError(f"{where}.package: expected a string")
    return Plugin(name, source, version, enabled, package or _package_of(source, name))


def _package_of(source: str, name: str) -> str:
    if source.startswith("github:"):
        return source.rsplit("/", 1)[1]
    path = Path(source)
    if path.suffix == ".whl":
        try:
            return parse_wheel_name(path.name).distribution
        except ValueError:
            return name
    try:
        project = tomllib.loads((path / "pyproject.toml").read_text("utf-8")).get("project", {})
        return str(project.get("name") or name)
    except (OSError, tomllib.TOMLDecodeError):
        return name


def set_enabled(path: Path, name: str, enabled: bool) -> None:
    """Flip ``enabled`` for one plugin, keeping the rest of the file (and comments) as is."""
    plugins = load_plugins(path)
    if name not in plugins:
        raise ConfigError(f"{path}: no plugin named {name!r} (known: "
                          f"{', '.join(plugins) or 'none'})")
    lines = path.read_text("utf-8").splitlines(keepends=True)
    header = re.compile(rf"\s*\[\s*plugins\s*\.\s*(\"{re.escape(name)}\"|{re.escape(name)})"
                        r"\s*\]\s*(#.*)?$")
    start = next(i for i, line in enumerate(lines) if header.match(line.rstrip("\n")))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
               len(lines))
    value = "true" if enabled else "false"
    for i in range(start + 1, end):
        if re.match(r"\s*enabled\s*=", lines[i]):
            lines[i] = re.sub(r"=\s*(true|false)", f"= {value}", lines[i], count=1)
            break
    else:
        lines.insert(start + 1, f"enabled = {value}\n")
    write_atomic(path, "".join(lines).encode(), 0o644)
    load_plugins(path)


def node_python(config: WatchmanConfig) -> Path:
    """The interpreter of the environment the node runs from."""
    installs = Installs(config.data_dir)
    current = installs.state().current
    if current is not None:
        return installs.python(current)
    command = Path(resolve_command(config, installs)[0])
    for candidate in (command.parent / "python", command.parent / "python3"):
        if candidate.exists() and (command.parent.parent / "pyvenv.cfg").is_file():
            return candidate
    if command.name.startswith("python"):
        return command
    raise InstallError(f"cannot tell which Python environment runs the node ({command}); "
                       "install knarr with `knarr-watchman upgrade` or `init` first")


async def installed_version(python: Path, package: str) -> str | None:
    out = await run_tool([str(python), "-c",
                      "import importlib.metadata as m, sys\ntry: print(m.version(sys.argv[1]))"
                      "\nexcept m.PackageNotFoundError: pass", package],
                     what=f"looking up {package}", cwd=python.parent)
    return out.strip() or None


async def install_plugin(
    config: WatchmanConfig, plugin: Plugin, python: Path, *, token: str | None = None
) -> str:
    """Install ``plugin`` into ``python``'s environment; returns the installed version."""
    source = plugin.source
    if source.startswith("github:"):
        owner, _, repo = source.removeprefix("github:").partition("/")
        releases = GitHubReleases(owner, repo, api=config.upgrade.github_api, token=token)
        release = await releases.matching(plugin.package, plugin.version)
        wheel = await releases.fetch(release, config.state_dir / "downloads")
        requirement = str(wheel)
    else:
        path = Path(source)
        if not path.exists():
            raise InstallError(f"plugin {plugin.name}: {path} does not exist")
        if path.suffix == ".whl":
            try:
                name = parse_wheel_name(path.name)
            except ValueError as exc:
                raise ReleaseError(f"plugin {plugin.name}: {exc}") from None
            if plugin.version and not satisfies(name.version, plugin.version):
                raise InstallError(f"plugin {plugin.name}: {path.name} is version "
                                   f"{name.version}, which does not match {plugin.version!r}")
            check_wheel(path, name.distribution, name.version)
        requirement = str(path)
    await pip_install(python, [requirement],
                      find_links=Path(requirement).parent if requirement.endswith(".whl")
                      else None)
    version = await installed_version(python, plugin.package)
    if version is None:
        raise InstallError(f"plugin {plugin.name}: pip installed it, but no distribution "
                           f"named {plugin.package!r} is there (set package = ...)")
    if plugin.version and not satisfies(version, plugin.version):
        raise InstallError(f"plugin {plugin.name}: installed {version}, which does not match "
                           f"{plugin.version!r}")
    return version


async def uninstall_plugin(plugin: Plugin, python: Path) -> bool:
    """Remove ``plugin`` from the environment; ``False`` if it was not installed."""
    if await installed_version(python, plugin.package) is None:
        return False
    await pip_uninstall(python, normalize(plugin.package))
    return True
