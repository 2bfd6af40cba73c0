"""``knarr.toml`` → typed, frozen configuration, with every default in one place.

Each section of the file is one dataclass; its field defaults *are* the documented
defaults. :func:`load_config` reads a file, :func:`parse_config` validates an already
parsed mapping, and every problem becomes one :class:`~knarr.errors.ConfigError` line
naming the file, the dotted key, what was found and what was expected::

    knarr.toml: skills.echo.visibility: expected one of "public", "private", "whitelist",
    got "secret"

Handler *files* are not checked while parsing, so a config can be validated on a machine
that lacks them; the node calls :func:`check_handlers` when it starts.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import ipaddress
import json
import math
import os
import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, NoReturn, cast

from knarr.errors import ConfigError

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "MAX_DESCRIPTION_LENGTH",
    "SCHEMA_TYPES",
    "SKILL_NAME_RE",
    "VISIBILITIES",
    "Config",
    "EconomyConfig",
    "NetworkConfig",
    "NodeConfig",
    "SidecarConfig",
    "SkillConfig",
    "ThrallCascadeConfig",
    "ThrallConfig",
    "ThrallLocalConfig",
    "ThrallOllamaConfig",
    "ThrallOpenAIConfig",
    "ThrallTrustTiers",
    "Visibility",
    "check_handlers",
    "default_config",
    "load_config",
    "parse_config",
    "check_host",
    "parse_hostport",
]

DEFAULT_BOOTSTRAP: Final[tuple[str, ...]] = (
    "bootstrap1.knarr.network:9000",
    "bootstrap2.knarr.network:9000",
)
"""The public bootstrap peers, used when ``[network].bootstrap`` is not set."""

Visibility = Literal["public", "private", "whitelist"]
VISIBILITIES: Final[tuple[Visibility, ...]] = ("public", "private", "whitelist")

SCHEMA_TYPES: Final[tuple[str, ...]] = (
    "string",
    "number",
    "integer",
    "boolean",
    "object",
    "array",
    "any",
)
"""Type names allowed as values of ``input_schema`` / ``output_schema``."""

SKILL_NAME_RE: Final[re.Pattern[str]] = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
"""A skill name (use ``fullmatch``): lowercase letters, digits, hyphens; 1-64 chars."""

MAX_DESCRIPTION_LENGTH: Final = 256

_NODE_ID_RE: Final = re.compile(r"[0-9a-fA-F]{64}")
_HOSTNAME_RE: Final = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
_BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_DEFAULT_SOURCE: Final = "<defaults>"


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """``[node]``: where the node listens, stores its data, and its hard limits."""

    port: int = 9000
    """UDP (DHT) and TCP (tasks) port; 0 lets the OS choose a free one."""
    host: str = "0.0.0.0"
    """Bind address."""
    storage: str = "node.db"
    """SQLite database path, as written (see :meth:`Config.resolve_path`)."""
    advertise_host: str | None = None
    """Address announced to peers; ``None`` = auto-detect."""
    sidecar_port: int | None = None
    """HTTP asset sidecar port; ``None`` = ``port + 1``, 0 = disabled."""
    max_asset_size: int = 104_857_600
    """Largest asset upload accepted by the sidecar, in bytes."""
    max_task_timeout: float = 3600.0
    """Longest a handler may run, in seconds; 0 = unlimited."""

    @property
    def effective_sidecar_port(self) -> int:
        """The sidecar port to bind: ``sidecar_port``, else ``port + 1``; 0 = disabled.

        With ``port`` 0 or 65535 there is no usable "port + 1", so an unset
        ``sidecar_port`` means disabled (:func:`parse_config` refuses both in a file).
        """
        if self.sidecar_port is not None:
            return self.sidecar_port
        if self.port == 0 or self.port >= 65535:
            return 0
        return self.port + 1


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    """``[network]``: how the node joins the network and defends its DHT port."""

    bootstrap: tuple[str, ...] = DEFAULT_BOOTSTRAP
    """``"host:port"`` peers to join through; empty = start a new network."""
    upnp: bool = True
    """Try UPnP port mapping (DHT and sidecar ports) at start."""
    clock_skew: float = 60.0
    """Knarr-specific. Seconds a message timestamp may differ from our clock (±) before
    the message is rejected as stale or future; also the replay-nonce window."""
    subnet_limit: int = 2
    """Knarr-specific. Most contacts one routing bucket keeps from a single /24 (IPv4)
    or /48 (IPv6) subnet; loopback addresses are exempt."""
    rate_limit: float = 200.0
    """Knarr-specific. Sustained datagrams per second accepted from one source IP."""
    rate_burst: int = 400
    """Knarr-specific. Datagrams one source IP may send in a burst above ``rate_limit``
    (the token-bucket capacity)."""

    @property
    def bootstrap_addresses(self) -> tuple[tuple[str, int], ...]:
        """``bootstrap`` split into ``(host, port)`` pairs (IPv6 hosts without brackets)."""
        return tuple(parse_hostport(entry, source="network.bootstrap") for entry in self.bootstrap)


@dataclass(frozen=True, kw_only=True)
class EconomyConfig:
    """``[economy]`` (Knarr-specific): how much credit this node extends to requesters."""

    credit_limit: float = 100.0
    """Most a requester may owe this node before new tasks are refused."""
    credit: Mapping[str, float] = field(default_factory=dict)
    """Per-peer limits, node id → credits, overriding ``credit_limit``."""

    def limit_for(self, node_id: str) -> float:
        return self.credit.get(node_id, self.credit_limit)


THRALL_BACKENDS: Final[tuple[str, ...]] = ("none", "local", "ollama", "openai")
"""LLM backends Thrall can use; ``none`` sends every LLM recipe to its fallback."""


@dataclass(frozen=True, kw_only=True)
class ThrallLocalConfig:
    """``[thrall.local]``: llama-cpp-python in this process (the ``llm`` extra)."""

    model_path: str = ""
    """A GGUF file, relative to the config's folder."""
    n_threads: int = 2
    n_ctx: int = 1024
    max_tokens: int = 96
    timeout: float = 30.0


@dataclass(frozen=True, kw_only=True)
class ThrallOllamaConfig:
    """``[thrall.ollama]``: an ollama server (``/api/generate``)."""

    url: str = "http://127.0.0.1:11434"
    model: str = "gemma3:1b"
    temperature: float = 0.1
    max_tokens: int = 128
    num_ctx: int = 2048
    timeout: float = 30.0


@dataclass(frozen=True, kw_only=True)
class ThrallOpenAIConfig:
    """``[thrall.openai]``: any OpenAI-compatible chat completions API (metered)."""

    url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    api_key: str = ""
    """The key itself; prefer ``api_key_env``."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the key, used when ``api_key`` is empty."""
    temperature: float = 0.1
    max_tokens: int = 128
    timeout: float = 20.0
    cost_budget_daily: float = 0.0
    """Most to spend per UTC day, in the currency of the prices below; 0 = unlimited."""
    cost_per_1m_input: float = 0.15
    cost_per_1m_output: float = 0.60


@dataclass(frozen=True, kw_only=True)
class ThrallCascadeConfig:
    """``[thrall.cascade]``: a small L1 model that drops noise before the L2 backend."""

    enabled: bool = False
    l1_backend: str = "local"
    l1_model: str = ""
    """Overrides the L1 backend's model (a GGUF path for ``local``); empty = its own."""
    l1_prompt: str = "triage-l1"


@dataclass(frozen=True, kw_only=True)
class ThrallTrustTiers:
    """``[thrall.trust_tiers]``: node-id prefixes (hex); everyone else is ``unknown``."""

    team: tuple[str, ...] = ()
    """Your own nodes."""
    known: tuple[str, ...] = ()
    """Peers you trust."""

    def tier_of(self, node_id: str) -> str:
        node_id = node_id.lower()
        if node_id and any(node_id.startswith(p) for p in self.team):
            return "team"
        if node_id and any(node_id.startswith(p) for p in self.known):
            return "known"
        return "unknown"


@dataclass(frozen=True, kw_only=True)
class ThrallConfig:
    """``[thrall]`` (Knarr-specific): the recipe engine, off unless ``enabled``."""

    enabled: bool = False
    recipes_dir: str = "recipes"
    """Recipe TOML files (and ``prompts/``), relative to the config's folder."""
    bundled: bool = True
    """Also load the recipes that ship with knarr (a file of the same name overrides)."""
    backend: str = "none"
    """L2 LLM backend: one of :data:`THRALL_BACKENDS`."""
    queue_timeout: float = 5.0
    """Seconds an LLM evaluation waits for the backend before taking its fallback."""
    max_queue: int = 16
    """LLM evaluations allowed to wait; more take their fallback at once."""
    tick_interval: float = 60.0
    """Default ``on_tick`` interval in seconds."""
    delegate_key: str = "thrall_delegate.key"
    """The delegated settlement key file; deleting it revokes the key here."""
    trust_tiers: ThrallTrustTiers = field(default_factory=ThrallTrustTiers)
    local: ThrallLocalConfig = field(default_factory=ThrallLocalConfig)
    ollama: ThrallOllamaConfig = field(default_factory=ThrallOllamaConfig)
    openai: ThrallOpenAIConfig = field(default_factory=ThrallOpenAIConfig)
    cascade: ThrallCascadeConfig = field(default_factory=ThrallCascadeConfig)


@dataclass(frozen=True, kw_only=True)
class SidecarConfig:
    """``[sidecar]``: the HTTP asset store."""

    asset_dir: Path = Path("assets")
    """Where assets are stored; :func:`parse_config` resolves it against the config's
    folder."""


@dataclass(frozen=True, kw_only=True)
class SkillConfig:
    """``[skills.<name>]``: one skill this node serves."""

    name: str
    handler: str
    """``"path/to/file.py:function_name"``, the path relative to the config's folder."""
    description: str = ""
    tags: tuple[str, ...] = ()
    input_schema: Mapping[str, str] = field(default_factory=dict)
    """Input field → type name (one of :data:`SCHEMA_TYPES`)."""
    output_schema: Mapping[str, str] = field(default_factory=dict)
    visibility: Visibility = "public"
    """``public``: announced, anyone may call; ``private``: never announced, local calls
    only; ``whitelist``: announced, only ``allowed_nodes`` may call."""
    allowed_nodes: tuple[str, ...] = ()
    """Lowercase 64-hex node ids; only used (and then required) with ``whitelist``."""
    price: float = 1.0
    """Credits per call."""
    max_input_size: int = 65536
    """Largest accepted input, in bytes."""

    def handler_path(self, base_dir: str | os.PathLike[str]) -> Path:
        """The handler's file, resolved against ``base_dir`` (the config's folder)."""
        return Path(base_dir) / Path(self.handler.rpartition(":")[0]).expanduser()

    @property
    def handler_function(self) -> str:
        """The name of the handler function inside :meth:`handler_path`."""
        return self.handler.rpartition(":")[2]


@dataclass(frozen=True, kw_only=True)
class Config:
    """A whole ``knarr.toml``; build it with :func:`load_config` or :func:`parse_config`.

    Override values with :func:`dataclasses.replace` (e.g. for command-line flags).
    """

    node: NodeConfig = field(default_factory=NodeConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    sidecar: SidecarConfig = field(default_factory=SidecarConfig)
    skills: Mapping[str, SkillConfig] = field(default_factory=dict)
    """Skill name → skill, in file order."""
    bridges: Mapping[str, float] = field(default_factory=dict)
    """MCP server command → call timeout in seconds."""
    economy: EconomyConfig = field(default_factory=EconomyConfig)
    thrall: ThrallConfig = field(default_factory=ThrallConfig)
    path: Path | None = None
    """The file this came from, as given; ``None`` when not read from a file."""
    base_dir: Path = field(default_factory=Path.cwd)
    """Absolute folder that relative paths in the config are resolved against."""
    source: str = _DEFAULT_SOURCE
    """How error messages name this config (the file path as given)."""

    def resolve_path(self, value: str | os.PathLike[str]) -> Path:
        """``value`` with ``~`` expanded, made absolute against :attr:`base_dir`."""
        return self.base_dir / Path(value).expanduser()


def default_config() -> Config:
    """Every default, relative paths resolved against the current directory."""
    return parse_config({})


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a ``knarr.toml``; relative paths in it resolve against its folder."""
    file = Path(path)
    source = os.fspath(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        _fail(source, "", 'file not found (run "knarr init" to create one, or pass --config)')
    except IsADirectoryError:
        _fail(source, "", "is a directory, expected a knarr.toml file")
    except PermissionError:
        _fail(source, "", "cannot read the file: permission denied")
    except OSError as exc:
        _fail(source, "", f"cannot read the file: {exc.strerror or exc}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        _fail(source, "", f"not valid UTF-8 text (bad byte at offset {exc.start})")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        _fail(source, "", f"invalid TOML: {exc}")
    config = parse_config(data, source=source, base_dir=file.absolute().parent)
    return dataclasses.replace(config, path=file)


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str = _DEFAULT_SOURCE,
    base_dir: Path | None = None,
) -> Config:
    """Validate a parsed ``knarr.toml`` mapping; ``source`` names it in error messages.

    Relative paths resolve against ``base_dir`` (default: the current directory).
    """
    base = (base_dir if base_dir is not None else Path.cwd()).absolute()
    reader = _Reader(source)
    reader.check_keys(data, "", _SECTIONS)
    return Config(
        node=_parse_node(reader, data),
        network=_parse_network(reader, data),
        sidecar=_parse_sidecar(reader, data, base),
        skills=_parse_skills(reader, data),
        bridges=_parse_bridges(reader, data),
        economy=_parse_economy(reader, data),
        thrall=_parse_thrall(reader, data),
        path=None,
        base_dir=base,
        source=source,
    )


def check_handlers(config: Config) -> None:
    """Check that every skill's handler file exists; the node calls this at start.

    The modules are not imported: a missing *function* is the loader's to report.
    """
    for name, skill in config.skills.items():
        file = skill.handler_path(config.base_dir)
        if not file.is_file():
            key = _join(_join("skills", name), "handler")
            _fail(
                config.source, key, f"handler file not found: {file} (from {_quote(skill.handler)})"
            )


def _host_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a host name or IP address (without a port)."""
    if _HOSTNAME_RE.fullmatch(text):
        return None
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return f"expected a host name or IP address (without a port), got {_quote(text)}"
    return None


def check_host(text: str, source: str) -> str:
    """``text`` if it is a host name or an IP address (without a port); else a
    :class:`ConfigError` naming ``source``."""
    problem = _host_problem(text)
    if problem is not None:
        raise ConfigError(f"{source}: {problem}")
    return text


def parse_hostport(text: str, *, source: str = "address") -> tuple[str, int]:
    """Split ``"host:port"`` or ``"[ipv6]:port"`` into ``(host, port)``.

    ``source`` prefixes the error message (a file and key, or a flag like ``--bootstrap``).
    """
    if not isinstance(text, str):
        raise ConfigError(f'{source}: expected a "host:port" string, got {_got(text)}')
    expected = f'expected "host:port" (or "[ipv6]:port"), got {_quote(text)}'
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ConfigError(f"{source}: {expected}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                f"{source}: {_quote(host)} in brackets is not an IPv6 address; {expected}"
            ) from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"{source}: {expected}")
        if ":" in host:
            raise ConfigError(
                f'{source}: IPv6 addresses need brackets, as in "[::1]:9000"; got {_quote(text)}'
            )
        if not _HOSTNAME_RE.fullmatch(host):
            raise ConfigError(f"{source}: {_quote(host)} is not a host name or address; {expected}")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ConfigError(f"{source}: port {_quote(port_text)} is not a number; {expected}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{source}: port {port} is out of range 1-65535 in {_quote(text)}")
    return host, port


# --- sections -------------------------------------------------------------------------


def _field_names(cls: type[Any]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


_SECTIONS: Final = ("node", "network", "sidecar", "skills", "bridges", "economy", "thrall")
_SECTION_CLASSES: Final[Mapping[str, type[Any]]] = {
    "node": NodeConfig,
    "network": NetworkConfig,
    "sidecar": SidecarConfig,
    "economy": EconomyConfig,
    "thrall": ThrallConfig,
}
_SKILL_KEYS: Final = tuple(n for n in _field_names(SkillConfig) if n != "name")


def _section_of(key: str) -> str | None:
    """The section that has ``key``, for a key misplaced at the top level."""
    for section, cls in _SECTION_CLASSES.items():
        if key in _field_names(cls):
            return section
    return None


def _parse_node(r: _Reader, data: Mapping[str, Any]) -> NodeConfig:
    t = r.section(data, "node")
    kw: dict[str, Any] = {}
    if "port" in t:
        kw["port"] = r.integer(t["port"], "node.port", 0, 65535, "0 = any free port")
    if "host" in t:
        kw["host"] = r.host(t["host"], "node.host")
    if "storage" in t:
        kw["storage"] = r.string(t["storage"], "node.storage")
    if "advertise_host" in t:
        kw["advertise_host"] = r.host(t["advertise_host"], "node.advertise_host")
    if "sidecar_port" in t:
        kw["sidecar_port"] = r.integer(t["sidecar_port"], "node.sidecar_port", 0, 65535)
    if "max_asset_size" in t:
        kw["max_asset_size"] = r.integer(t["max_asset_size"], "node.max_asset_size", 1)
    if "max_task_timeout" in t:
        kw["max_task_timeout"] = r.number(
            t["max_task_timeout"], "node.max_task_timeout", 0.0, hint="0 = unlimited"
        )
    node = NodeConfig(**kw)
    if node.sidecar_port is None:
        if node.port == 0:
            r.fail(
                "node.sidecar_port",
                "must be set when node.port is 0 (there is no port + 1); "
                "set a port, or 0 to disable the sidecar",
            )
        if node.port == 65535:
            r.fail(
                "node.sidecar_port",
                "the default port + 1 = 65536 is out of range; "
                "set a port, or 0 to disable the sidecar",
            )
    elif node.sidecar_port != 0 and node.sidecar_port == node.port:
        r.fail(
            "node.sidecar_port",
            f"{node.sidecar_port} is also node.port (the task channel listens there); "
            "choose another port, or 0 to disable the sidecar",
        )
    return node


def _parse_network(r: _Reader, data: Mapping[str, Any]) -> NetworkConfig:
    t = r.section(data, "network")
    kw: dict[str, Any] = {}
    if "bootstrap" in t:
        entries = r.strings(t["bootstrap"], "network.bootstrap")
        for i, entry in enumerate(entries):
            parse_hostport(entry, source=f"{r.source}: network.bootstrap[{i}]")
        kw["bootstrap"] = entries
    if "upnp" in t:
        kw["upnp"] = r.boolean(t["upnp"], "network.upnp")
    if "clock_skew" in t:
        kw["clock_skew"] = r.number(t["clock_skew"], "network.clock_skew", 0.0, exclusive=True)
    if "subnet_limit" in t:
        kw["subnet_limit"] = r.integer(t["subnet_limit"], "network.subnet_limit", 1)
    if "rate_limit" in t:
        kw["rate_limit"] = r.number(t["rate_limit"], "network.rate_limit", 0.0, exclusive=True)
    if "rate_burst" in t:
        kw["rate_burst"] = r.integer(t["rate_burst"], "network.rate_burst", 1)
    return NetworkConfig(**kw)


def _parse_sidecar(r: _Reader, data: Mapping[str, Any], base_dir: Path) -> SidecarConfig:
    t = r.section(data, "sidecar")
    asset_dir = str(SidecarConfig().asset_dir)
    if "asset_dir" in t:
        asset_dir = r.string(t["asset_dir"], "sidecar.asset_dir")
    return SidecarConfig(asset_dir=base_dir / Path(asset_dir).expanduser())


def _parse_skills(r: _Reader, data: Mapping[str, Any]) -> dict[str, SkillConfig]:
    if "skills" not in data:
        return {}
    skills = r.table(data["skills"], "skills")
    parsed: dict[str, SkillConfig] = {}
    for name, value in skills.items():
        key = _join("skills", str(name))
        if not isinstance(name, str) or not SKILL_NAME_RE.fullmatch(name):
            r.fail(
                key,
                f"invalid skill name {_quote(str(name))}: expected lowercase letters, digits "
                "and hyphens, starting with a letter or digit, at most 64 characters",
            )
        parsed[name] = _parse_skill(r, name, r.table(value, key), key)
    return parsed


def _parse_skill(r: _Reader, name: str, t: Mapping[str, Any], key: str) -> SkillConfig:
    r.check_keys(t, key, _SKILL_KEYS)
    if "handler" not in t:
        r.fail(_join(key, "handler"), 'missing; expected "path/to/file.py:function_name"')
    kw: dict[str, Any] = {"name": name, "handler": _handler(r, t["handler"], _join(key, "handler"))}
    if "description" in t:
        k = _join(key, "description")
        description = r.string(t["description"], k, allow_empty=True)
        if len(description) > MAX_DESCRIPTION_LENGTH:
            r.fail(
                k,
                f"expected at most {MAX_DESCRIPTION_LENGTH} characters, got {len(description)}",
            )
        kw["description"] = description
    if "tags" in t:
        kw["tags"] = r.strings(t["tags"], _join(key, "tags"))
    for schema in ("input_schema", "output_schema"):
        if schema in t:
            kw[schema] = _schema(r, t[schema], _join(key, schema))
    if "visibility" in t:
        kw["visibility"] = r.choice(t["visibility"], _join(key, "visibility"), VISIBILITIES)
    if "allowed_nodes" in t:
        kw["allowed_nodes"] = _node_ids(r, t["allowed_nodes"], _join(key, "allowed_nodes"))
    if "price" in t:
        kw["price"] = r.number(t["price"], _join(key, "price"), 0.0)
    if "max_input_size" in t:
        kw["max_input_size"] = r.integer(t["max_input_size"], _join(key, "max_input_size"), 1)
    skill = SkillConfig(**kw)
    if skill.visibility == "whitelist" and not skill.allowed_nodes:
        r.fail(
            _join(key, "allowed_nodes"),
            'required when visibility = "whitelist": list the 64-hex node ids allowed to call',
        )
    if skill.visibility != "whitelist" and skill.allowed_nodes:
        r.fail(
            _join(key, "allowed_nodes"),
            f'only applies when visibility = "whitelist", but visibility is '
            f'{_quote(skill.visibility)}; set visibility = "whitelist" or remove allowed_nodes',
        )
    return skill


def _handler(r: _Reader, value: object, key: str) -> str:
    text = r.string(value, key)
    expected = f'expected "path/to/file.py:function_name", got {_quote(text)}'
    file, sep, function = text.rpartition(":")
    if not sep:
        r.fail(key, f'{expected} (no ":")')
    if not file.endswith(".py") or len(Path(file).name) <= len(".py"):
        r.fail(key, f'{expected} (the file must end in ".py")')
    if not function.isidentifier():
        r.fail(key, f"{expected} ({_quote(function)} is not a Python function name)")
    return text


def _schema(r: _Reader, value: object, key: str) -> dict[str, str]:
    schema: dict[str, str] = {}
    for name, type_name in r.table(value, key).items():
        if not isinstance(name, str) or not name:
            r.fail(key, f"field names must be non-empty strings, got {_got(name)}")
        schema[name] = r.choice(type_name, _join(key, name), SCHEMA_TYPES)
    return schema


def _node_ids(r: _Reader, value: object, key: str) -> tuple[str, ...]:
    ids = r.strings(value, key)
    for i, node_id in enumerate(ids):
        if not _NODE_ID_RE.fullmatch(node_id):
            r.fail(
                f"{key}[{i}]",
                f"expected a node id of 64 hex characters, got {_quote(node_id)}",
            )
    return tuple(node_id.lower() for node_id in ids)


def _parse_economy(r: _Reader, data: Mapping[str, Any]) -> EconomyConfig:
    t = r.section(data, "economy")
    kw: dict[str, Any] = {}
    if "credit_limit" in t:
        kw["credit_limit"] = r.number(t["credit_limit"], "economy.credit_limit", 0.0)
    if "credit" in t:
        table = r.table(t["credit"], "economy.credit")
        limits: dict[str, float] = {}
        for node_id, value in table.items():
            key = f"economy.credit.{node_id}"
            if not _NODE_ID_RE.fullmatch(node_id):
                r.fail(key, f"expected a node id of 64 hex characters, got {_quote(node_id)}")
            limits[node_id.lower()] = r.number(value, key, 0.0)
        kw["credit"] = limits
    return EconomyConfig(**kw)


_HEX_PREFIX_RE: Final = re.compile(r"[0-9a-fA-F]{1,64}")
_THRALL_TABLES: Final[Mapping[str, type[Any]]] = {
    "local": ThrallLocalConfig,
    "ollama": ThrallOllamaConfig,
    "openai": ThrallOpenAIConfig,
    "cascade": ThrallCascadeConfig,
}


def _typed_fields(r: _Reader, cls: type[Any], t: Mapping[str, Any], key: str) -> dict[str, Any]:
    """Values of a flat table whose dataclass fields are bool, int, float or str."""
    r.check_keys(t, key, _field_names(cls))
    kw: dict[str, Any] = {}
    defaults = cls()
    for name, value in t.items():
        k = _join(key, name)
        default = getattr(defaults, name)
        if isinstance(default, bool):
            kw[name] = r.boolean(value, k)
        elif isinstance(default, int):
            kw[name] = r.integer(value, k, 1)
        elif isinstance(default, float):
            kw[name] = r.number(value, k, 0.0)
        elif isinstance(default, str):
            kw[name] = r.string(value, k, allow_empty=True)
    return kw


def _parse_thrall(r: _Reader, data: Mapping[str, Any]) -> ThrallConfig:
    t = r.section(data, "thrall")
    flat = {k: v for k, v in t.items() if k not in _THRALL_TABLES and k != "trust_tiers"}
    kw = _typed_fields(r, ThrallConfig, flat, "thrall")
    if "backend" in kw:
        kw["backend"] = r.choice(kw["backend"], "thrall.backend", THRALL_BACKENDS)
    for name in ("recipes_dir", "delegate_key"):
        if name in kw:
            r.string(kw[name], f"thrall.{name}")
    if "queue_timeout" in t:
        r.number(t["queue_timeout"], "thrall.queue_timeout", 0.0, exclusive=True)
    if "tick_interval" in t:
        r.number(t["tick_interval"], "thrall.tick_interval", 0.0, exclusive=True)
    if "trust_tiers" in t:
        tiers = r.table(t["trust_tiers"], "thrall.trust_tiers")
        r.check_keys(tiers, "thrall.trust_tiers", ("team", "known"))
        found: dict[str, tuple[str, ...]] = {}
        for tier, value in tiers.items():
            key = f"thrall.trust_tiers.{tier}"
            for i, prefix in enumerate(r.strings(value, key)):
                if not _HEX_PREFIX_RE.fullmatch(prefix):
                    r.fail(f"{key}[{i}]", "expected a node-id prefix of 1-64 hex characters, "
                           f"got {_quote(prefix)}")
            found[tier] = tuple(p.lower() for p in value)
        kw["trust_tiers"] = ThrallTrustTiers(**found)
    for name, cls in _THRALL_TABLES.items():
        if name in t:
            key = f"thrall.{name}"
            kw[name] = cls(**_typed_fields(r, cls, r.table(t[name], key), key))
    if "cascade" in kw and "l1_backend" in t["cascade"]:
        r.choice(kw["cascade"].l1_backend, "thrall.cascade.l1_backend", THRALL_BACKENDS[1:])
    return ThrallConfig(**kw)


def _parse_bridges(r: _Reader, data: Mapping[str, Any]) -> dict[str, float]:
    if "bridges" not in data:
        return {}
    bridges: dict[str, float] = {}
    for command, timeout in r.table(data["bridges"], "bridges").items():
        key = _join("bridges", str(command))
        if not isinstance(command, str) or not command.strip():
            r.fail(key, "expected an MCP server command, got an empty key")
        try:
            shlex.split(command)
        except ValueError as exc:
            r.fail(key, f"the command cannot be split into arguments: {exc}")
        bridges[command] = r.number(timeout, key, 0.0, exclusive=True, hint="seconds")
    return bridges


# --- reading values -------------------------------------------------------------------


class _Reader:
    """Type- and range-checks values, raising one ``ConfigError`` line per problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> NoReturn:
        _fail(self.source, key, problem)

    def section(self, data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
        if name not in data:
            return {}
        table = self.table(data[name], name)
        self.check_keys(table, name, _field_names(_SECTION_CLASSES[name]))
        return table

    def table(self, value: object, key: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(key, f"expected a table, got {_got(value)}")
        return cast(Mapping[str, Any], value)

    def check_keys(self, table: Mapping[str, Any], prefix: str, known: Sequence[str]) -> None:
        for name in table:
            if name in known:
                continue
            key = _join(prefix, str(name))
            if prefix:
                what = "unknown key"
            elif isinstance(table[name], Mapping):
                what = "unknown section"
            else:
                what = "unknown top-level key"
            close = difflib.get_close_matches(str(name), known, n=1)
            if close:
                self.fail(key, f"{what}; did you mean {_quote(_join(prefix, close[0]))}?")
            owner = None if prefix else _section_of(str(name))
            if owner is not None:
                self.fail(
                    key, f"{what}; did you mean {_quote(_join(owner, key))} (under [{owner}])?"
                )
            self.fail(key, f"{what}; expected one of {_choices(known)}")

    def integer(
        self, value: object, key: str, minimum: int, maximum: int | None = None, hint: str = ""
    ) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an integer, got {_got(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            self.fail(key, f"expected an integer {bounds}{_hint(hint)}, got {value}")
        return value

    def number(
        self,
        value: object,
        key: str,
        minimum: float,
        *,
        exclusive: bool = False,
        hint: str = "",
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"expected a number, got {_got(value)}")
        number = float(value)
        if not math.isfinite(number):
            self.fail(key, f"expected a finite number, got {_show(value)}")
        if number < minimum or (exclusive and number == minimum):
            bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
            self.fail(key, f"expected a number {bound}{_hint(hint)}, got {_show(value)}")
        return number

    def string(self, value: object, key: str, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {_got(value)}")
        if not allow_empty and not value.strip():
            self.fail(key, 'expected a non-empty string, got ""')
        return value

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {_got(value)}")
        return value

    def strings(self, value: object, key: str) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            self.fail(key, f"expected an array of strings, got {_got(value)}")
        for i, item in enumerate(value):
            self.string(item, f"{key}[{i}]")
        return tuple(cast(Iterable[str], value))

    def choice(self, value: object, key: str, choices: Sequence[str]) -> Any:
        if not isinstance(value, str) or value not in choices:
            shown = _quote(value) if isinstance(value, str) else _got(value)
            close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
            suggestion = f" (did you mean {_quote(close[0])}?)" if close else ""
            self.fail(key, f"expected one of {_choices(choices)}, got {shown}{suggestion}")
        return value

    def host(self, value: object, key: str) -> str:
        text = self.string(value, key)
        problem = _host_problem(text)
        if problem is not None:
            self.fail(key, problem)
        return text


def _fail(source: str, key: str, problem: str) -> NoReturn:
    raise ConfigError(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


def _join(prefix: str, name: str) -> str:
    """A dotted key as TOML would write it (names that are not bare keys get quoted)."""
    part = name if _BARE_KEY_RE.fullmatch(name) else json.dumps(name, ensure_ascii=False)
    return f"{prefix}.{part}" if prefix else part


def _quote(text: str, limit: int = 60) -> str:
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def _choices(choices: Iterable[str]) -> str:
    return ", ".join(_quote(choice) for choice in choices)


def _hint(hint: str) -> str:
    return f" ({hint})" if hint else ""


def _show(value: object) -> str:
    """A value as it would look in TOML (long strings shortened)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, int | float):
        return repr(value)
    return _kind(value)


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return "a date/time"
    return f"a {type(value).__name__}"


def _got(value: object) -> str:
    """``a string "9000"``, ``an array``: what was found, for a type error."""
    kind = _kind(value)
    if isinstance(value, bool | int | float | str):
        return f"{kind} {_show(value)}"
    return kind
