"""``watchman.toml`` → typed, frozen configuration, with every default in one place.

One dataclass per section; its field defaults *are* the documented defaults. Every
problem becomes one :class:`~knarr.errors.ConfigError` line naming the file and the
dotted key, the way ``knarr.toml`` errors read::

    watchman.toml: health.health_interval: expected a number > 0 (seconds), got -1

Durations are floats in seconds, so tests can use fractions of a second.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

from knarr.errors import ConfigError

__all__ = [
    "DEFAULT_GITHUB_API",
    "DEFAULT_SOURCE",
    "HealthConfig",
    "NodeSection",
    "RecoveryConfig",
    "UpgradeConfig",
    "WatchmanConfig",
    "load_watchman_config",
    "parse_watchman_config",
    "watchman_toml",
]

DEFAULT_SOURCE: Final = "github:knarrnet/knarr"
DEFAULT_GITHUB_API: Final = "https://api.github.com"
_GITHUB_RE: Final = re.compile(r"github:([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)")


@dataclass(frozen=True, kw_only=True)
class NodeSection:
    """``[node]``: the command that runs the node, and the node's data folder."""

    command: str = "knarr"
    """A name looked up in the active knarr install first, then on ``PATH``; or a path."""
    args: tuple[str, ...] = ()
    """Arguments; empty = ``serve --data-dir DATA_DIR --headless``."""
    data_dir: Path = Path(".")
    """The node's folder (node.db, knarr.toml, cockpit socket); resolved against the
    config file's folder."""

    @property
    def argv_tail(self) -> tuple[str, ...]:
        return self.args or ("serve", "--data-dir", str(self.data_dir), "--headless")


@dataclass(frozen=True, kw_only=True)
class HealthConfig:
    """``[health]``: how the node's cockpit is probed."""

    cockpit_url: str | None = None
    """``http://127.0.0.1:PORT`` (``knarr serve --cockpit PORT``), with the token from
    ``DATA_DIR/cockpit.token``; ``None`` = the Unix socket ``DATA_DIR/cockpit.sock``."""
    health_interval: float = 10.0
    """Seconds between probes; also how long one probe may take."""
    health_fail_threshold: int = 3
    """Consecutive failed probes before the node is killed and restarted."""
    kill_grace: float = 10.0
    """Knarr-specific. Seconds between SIGTERM and SIGKILL when killing a hung node."""


@dataclass(frozen=True, kw_only=True)
class RecoveryConfig:
    """``[recovery]``: restarts with exponential backoff, and when to give up."""

    max_restarts: int = 10
    initial_backoff: float = 5.0
    max_backoff: float = 300.0
    backoff_reset_uptime: float = 1800.0
    """Seconds of healthy running after which the restart count starts again at 0."""


@dataclass(frozen=True, kw_only=True)
class UpgradeConfig:
    """``[upgrade]``: where releases come from and how a switch is checked."""

    source: str = DEFAULT_SOURCE
    """``github:owner/repo`` or a folder of wheels (resolved against the config's folder)."""
    auto_upgrade: bool = False
    check_interval: float = 3600.0
    drain_timeout: float = 60.0
    """Seconds the old node gets to finish in-flight tasks before it is killed."""
    health_timeout: float = 30.0
    """Seconds a started node (a new version, or any start) has to answer its first
    health probe; an upgrade that misses it is rolled back."""
    github_api: str = DEFAULT_GITHUB_API
    """Knarr-specific. Base URL of the GitHub releases API (for GitHub Enterprise, or a
    test server)."""

    @property
    def github_repo(self) -> tuple[str, str] | None:
        """``(owner, repo)`` for a ``github:`` source, else ``None`` (a folder)."""
        match = _GITHUB_RE.fullmatch(self.source)
        return (match.group(1), match.group(2)) if match else None


@dataclass(frozen=True, kw_only=True)
class WatchmanConfig:
    """A whole ``watchman.toml``."""

    node: NodeSection = field(default_factory=NodeSection)
    health: HealthConfig = field(default_factory=HealthConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    upgrade: UpgradeConfig = field(default_factory=UpgradeConfig)
    path: Path | None = None
    """The file this came from (absolute)."""
    source: str = "<defaults>"
    """How error messages name this config (the path as given)."""

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir

    @property
    def state_dir(self) -> Path:
        """``DATA_DIR/watchman``: the supervisor's own files."""
        return self.node.data_dir / "watchman"

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()


def load_watchman_config(path: str | os.PathLike[str]) -> WatchmanConfig:
    """Read and validate a ``watchman.toml``."""
    file = Path(path)
    source = os.fspath(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        _fail(source, "", "file not found (create one with `knarr-watchman init --data-dir DIR`"
                          ", or pass --config)")
    except IsADirectoryError:
        _fail(source, "", "is a directory, expected a watchman.toml file")
    except OSError as exc:
        _fail(source, "", f"cannot read the file: {exc.strerror or exc}")
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        _fail(source, "", f"not valid UTF-8 text (bad byte at offset {exc.start})")
    except tomllib.TOMLDecodeError as exc:
        _fail(source, "", f"invalid TOML: {exc}")
    return parse_watchman_config(data, source=source, path=file.absolute())


def parse_watchman_config(
    data: Mapping[str, Any], *, source: str = "<defaults>", path: Path | None = None
) -> WatchmanConfig:
    """Validate a parsed ``watchman.toml``; relative paths resolve against ``path``'s folder."""
    r = _Reader(source)
    base = path.parent if path is not None else Path.cwd()
    r.check_keys(data, "", tuple(_SECTIONS))
    t = r.section(data, "node")
    node_kw: dict[str, Any] = {}
    if "command" in t:
        node_kw["command"] = r.string(t["command"], "node.command")
    if "args" in t:
        node_kw["args"] = r.strings(t["args"], "node.args")
    data_dir = base
    if "data_dir" in t:
        data_dir = base / Path(r.string(t["data_dir"], "node.data_dir")).expanduser()
    node = NodeSection(data_dir=Path(os.path.normpath(data_dir.absolute())), **node_kw)

    t = r.section(data, "health")
    health_kw: dict[str, Any] = {}
    if "cockpit_url" in t:
        health_kw["cockpit_url"] = _cockpit_url(r, t["cockpit_url"])
    if "health_interval" in t:
        health_kw["health_interval"] = r.seconds(t["health_interval"], "health.health_interval")
    if "health_fail_threshold" in t:
        health_kw["health_fail_threshold"] = r.integer(
            t["health_fail_threshold"], "health.health_fail_threshold", 1)
    if "kill_grace" in t:
        health_kw["kill_grace"] = r.seconds(t["kill_grace"], "health.kill_grace", zero=True)

    t = r.section(data, "recovery")
    recovery_kw: dict[str, Any] = {}
    if "max_restarts" in t:
        recovery_kw["max_restarts"] = r.integer(t["max_restarts"], "recovery.max_restarts", 0)
    for key in ("initial_backoff", "max_backoff", "backoff_reset_uptime"):
        if key in t:
            recovery_kw[key] = r.seconds(t[key], f"recovery.{key}", zero=True)
    recovery = RecoveryConfig(**recovery_kw)
    if recovery.max_backoff < recovery.initial_backoff:
        r.fail("recovery.max_backoff", f"expected a number >= recovery.initial_backoff "
               f"({recovery.initial_backoff:g}), got {recovery.max_backoff:g}")

    t = r.section(data, "upgrade")
    upgrade_kw: dict[str, Any] = {}
    if "source" in t:
        upgrade_kw["source"] = _source(r, t["source"], base)
    if "auto_upgrade" in t:
        upgrade_kw["auto_upgrade"] = r.boolean(t["auto_upgrade"], "upgrade.auto_upgrade")
    for key in ("check_interval", "drain_timeout", "health_timeout"):
        if key in t:
            upgrade_kw[key] = r.seconds(t[key], f"upgrade.{key}")
    if "github_api" in t:
        upgrade_kw["github_api"] = _http_url(r, t["github_api"], "upgrade.github_api").rstrip("/")
    return WatchmanConfig(
        node=node, health=HealthConfig(**health_kw), recovery=recovery,
        upgrade=UpgradeConfig(**upgrade_kw), path=path, source=source,
    )


def watchman_toml(data_dir: Path, *, command: str = "knarr") -> str:
    """The ``watchman.toml`` that ``init`` writes: every key with its default."""
    d = json.dumps(str(data_dir))
    return f"""[node]
command = {json.dumps(command)}
args = ["serve", "--data-dir", {d}, "--headless"]
data_dir = {d}

[health]
# cockpit_url = "http://127.0.0.1:8080"  # with `knarr serve --cockpit 8080`; default: the socket
health_interval = 10        # seconds between health probes
health_fail_threshold = 3   # failures before killing the node
kill_grace = 10             # seconds between SIGTERM and SIGKILL for a hung node

[recovery]
max_restarts = 10
initial_backoff = 5         # seconds before first restart
max_backoff = 300           # maximum backoff between restarts
backoff_reset_uptime = 1800 # healthy seconds after which the restart count resets

[upgrade]
source = "{DEFAULT_SOURCE}"
auto_upgrade = false        # set to true to enable automatic upgrades
check_interval = 3600
drain_timeout = 60          # wait for in-flight tasks before upgrading
health_timeout = 30         # time for new version to become healthy before rollback
"""


# --- values -----------------------------------------------------------------------------

_SECTIONS: Final[Mapping[str, tuple[str, ...]]] = {
    "node": tuple(f.name for f in fields(NodeSection)),
    "health": tuple(f.name for f in fields(HealthConfig)),
    "recovery": tuple(f.name for f in fields(RecoveryConfig)),
    "upgrade": tuple(f.name for f in fields(UpgradeConfig)),
}


def _cockpit_url(r: _Reader, value: object) -> str:
    url = _http_url(r, value, "health.cockpit_url")
    parts = urlsplit(url)
    if parts.path not in ("", "/") or parts.query:
        r.fail("health.cockpit_url", f"expected scheme, host and port only, got {_quote(url)}")
    if parts.port is None:
        r.fail("health.cockpit_url", f'expected a port, as in "http://127.0.0.1:8080", '
               f"got {_quote(url)}")
    return url.rstrip("/")


def _http_url(r: _Reader, value: object, key: str) -> str:
    url = r.string(value, key)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        r.fail(key, f"not a URL ({exc}): {_quote(url)}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.fail(key, f'expected an http:// or https:// URL, got {_quote(url)}')
    return url


def _source(r: _Reader, value: object, base: Path) -> str:
    text = r.string(value, "upgrade.source")
    if text.startswith("github:"):
        if not _GITHUB_RE.fullmatch(text):
            r.fail("upgrade.source", f'expected "github:owner/repo", got {_quote(text)}')
        return text
    if ":" in text.split("/", 1)[0] and not Path(text).exists():
        r.fail("upgrade.source", f'expected "github:owner/repo" or a folder of wheels, '
               f"got {_quote(text)}")
    return os.path.normpath(base / Path(text).expanduser())


class _Reader:
    """Type- and range-checks values, raising one ``ConfigError`` line per problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> NoReturn:
        _fail(self.source, key, problem)

    def check_keys(self, table: Mapping[str, Any], prefix: str, known: Sequence[str]) -> None:
        for name in table:
            if name in known:
                continue
            key = f"{prefix}.{name}" if prefix else name
            what = "unknown key" if prefix else "unknown section"
            close = difflib.get_close_matches(name, known, n=1)
            if close:
                guess = f"{prefix}.{close[0]}" if prefix else close[0]
                self.fail(key, f"{what}; did you mean {_quote(guess)}?")
            if not prefix:
                for section, keys in _SECTIONS.items():
                    if name in keys:
                        self.fail(key, f"{what}; did you mean {_quote(f'{section}.{name}')} "
                                  f"(under [{section}])?")
            self.fail(key, f"{what}; expected one of {', '.join(map(_quote, known))}")

    def section(self, data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, Mapping):
            self.fail(name, f"expected a table ([{name}]), got {_kind(value)}")
        self.check_keys(value, name, _SECTIONS[name])
        return value

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {_kind(value)}")
        if not value.strip():
            self.fail(key, 'expected a non-empty string, got ""')
        return value

    def strings(self, value: object, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.fail(key, f"expected an array of strings, got {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{key}[{i}]", f"expected a string, got {_kind(item)}")
        return tuple(value)

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {_kind(value)}")
        return value

    def integer(self, value: object, key: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an integer, got {_kind(value)}")
        if value < minimum:
            self.fail(key, f"expected an integer >= {minimum}, got {value}")
        return value

    def seconds(self, value: object, key: str, *, zero: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"expected a number of seconds, got {_kind(value)}")
        number = float(value)
        if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
            bound = ">= 0" if zero else "> 0"
            self.fail(key, f"expected a number {bound} (seconds), got {value!r}")
        return number


def _fail(source: str, key: str, problem: str) -> NoReturn:
    raise ConfigError(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


def _quote(text: str, limit: int = 60) -> str:
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({_quote(value)})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return f"a {type(value).__name__}"
