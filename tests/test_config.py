"""knarr.toml parsing: defaults, the documented example, and one clear line per mistake."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from knarr.config import (
    DEFAULT_BOOTSTRAP,
    SCHEMA_TYPES,
    Config,
    NetworkConfig,
    NodeConfig,
    SidecarConfig,
    SkillConfig,
    check_handlers,
    default_config,
    load_config,
    parse_config,
    parse_hostport,
)
from knarr.errors import ConfigError, KnarrError

NODE_A = "a" * 64
NODE_B = "0123456789ABCDEF" * 4

EXAMPLE = """\
[node]
port = 9000
host = "0.0.0.0"
storage = "node.db"
advertise_host = "203.0.113.50" # optional, auto-detected if omitted
sidecar_port = 9001 # default: port + 1; set to 0 to disable
max_asset_size = 104857600 # 100MB, optional
max_task_timeout = 3600 # seconds, 0 = unlimited (default: 3600)

[network]
bootstrap = ["127.0.0.1:9000", "127.0.0.1:9002"]
upnp = true # attempt UPnP port mapping (default: true)

[sidecar]
asset_dir = "./assets"

[skills.echo]
handler = "skills/echo.py:handle"
description = "Echoes input text back"
tags = ["example"]
input_schema = {text = "string"}
output_schema = {text = "string"}

[skills.translate]
handler = "skills/translate.py:translate"
description = "Translates text to English"
tags = ["nlp", "translation"]
visibility = "public"
input_schema = {text = "string", source_lang = "string"}
output_schema = {translated = "string"}

[skills.internal-tool]
handler = "skills/tool.py:handle"
visibility = "private"

[skills.partner-api]
handler = "skills/api.py:handle"
visibility = "whitelist"
allowed_nodes = ["NODE_A", "NODE_B"]
price = 2
max_input_size = 1024

[bridges]
"python3 my_mcp_server.py" = 30
""".replace("NODE_A", NODE_A).replace("NODE_B", NODE_B)


def write(tmp_path: Path, text: str, name: str = "knarr.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def skill(**overrides: Any) -> dict[str, Any]:
    return {"skills": {"echo": {"handler": "skills/echo.py:handle", **overrides}}}


# --- defaults ---------------------------------------------------------------------------


def test_defaults_match_the_documented_values() -> None:
    config = default_config()
    assert config.node == NodeConfig(
        port=9000,
        host="0.0.0.0",
        storage="node.db",
        advertise_host=None,
        sidecar_port=None,
        max_asset_size=104_857_600,
        max_task_timeout=3600,
    )
    assert config.node.effective_sidecar_port == 9001
    assert config.network.bootstrap == DEFAULT_BOOTSTRAP
    assert config.network.upnp is True
    assert config.network.clock_skew == 60
    assert config.network.subnet_limit == 2
    assert config.network.rate_limit == 200.0
    assert config.network.rate_burst == 400
    assert config.skills == {}
    assert config.bridges == {}
    assert config.path is None
    assert config.source == "<defaults>"
    assert config.base_dir == Path.cwd()
    assert config.sidecar.asset_dir == Path.cwd() / "assets"


def test_default_bootstrap_lists_two_peers_on_the_default_port() -> None:
    assert len(DEFAULT_BOOTSTRAP) == 2
    assert all(entry.endswith(":9000") for entry in DEFAULT_BOOTSTRAP)
    assert NetworkConfig().bootstrap == DEFAULT_BOOTSTRAP


def test_empty_file_gives_defaults_resolved_against_its_folder(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.node == NodeConfig()
    assert config.network == NetworkConfig()
    assert config.base_dir == tmp_path
    assert config.sidecar.asset_dir == tmp_path / "assets"


def test_skill_defaults() -> None:
    echo = parse_config(skill()).skills["echo"]
    assert echo == SkillConfig(name="echo", handler="skills/echo.py:handle")
    assert echo.description == ""
    assert echo.tags == ()
    assert echo.input_schema == {} and echo.output_schema == {}
    assert echo.visibility == "public"
    assert echo.allowed_nodes == ()
    assert echo.price == 1.0
    assert echo.max_input_size == 65536


def test_sections_are_frozen() -> None:
    config = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node.port = 1  # type: ignore[misc]


# --- the documented example ---------------------------------------------------------------


def test_full_example_parses(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    config = load_config(path)

    assert config.path == path
    assert config.source == str(path)
    assert config.base_dir == tmp_path
    assert config.node == NodeConfig(
        port=9000,
        host="0.0.0.0",
        storage="node.db",
        advertise_host="203.0.113.50",
        sidecar_port=9001,
        max_asset_size=104_857_600,
        max_task_timeout=3600,
    )
    assert config.network.bootstrap == ("127.0.0.1:9000", "127.0.0.1:9002")
    assert config.network.bootstrap_addresses == (("127.0.0.1", 9000), ("127.0.0.1", 9002))
    assert config.network.upnp is True
    assert config.sidecar == SidecarConfig(asset_dir=tmp_path / "assets")
    assert list(config.skills) == ["echo", "translate", "internal-tool", "partner-api"]

    echo = config.skills["echo"]
    assert echo.description == "Echoes input text back"
    assert echo.tags == ("example",)
    assert echo.input_schema == {"text": "string"}
    assert echo.output_schema == {"text": "string"}
    assert echo.handler_path(config.base_dir) == tmp_path / "skills" / "echo.py"
    assert echo.handler_function == "handle"

    translate = config.skills["translate"]
    assert translate.tags == ("nlp", "translation")
    assert translate.input_schema == {"text": "string", "source_lang": "string"}
    assert translate.output_schema == {"translated": "string"}
    assert translate.handler_function == "translate"

    assert config.skills["internal-tool"].visibility == "private"
    partner = config.skills["partner-api"]
    assert partner.visibility == "whitelist"
    assert partner.allowed_nodes == (NODE_A, NODE_B.lower())
    assert partner.price == 2.0 and isinstance(partner.price, float)
    assert partner.max_input_size == 1024

    assert config.bridges == {"python3 my_mcp_server.py": 30.0}


def test_knarr_specific_network_keys(tmp_path: Path) -> None:
    text = """\
[network]
bootstrap = []
clock_skew = 30
subnet_limit = 5
rate_limit = 50
rate_burst = 100
"""
    network = load_config(write(tmp_path, text)).network
    assert network == NetworkConfig(
        bootstrap=(), clock_skew=30.0, subnet_limit=5, rate_limit=50.0, rate_burst=100
    )


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ({"sidecar_port": 0}, 0),
        ({"port": 7000}, 7001),
        ({"port": 7000, "sidecar_port": 8080}, 8080),
    ],
)
def test_effective_sidecar_port(node: dict[str, Any], expected: int) -> None:
    assert parse_config({"node": node}).node.effective_sidecar_port == expected


def test_port_zero_with_explicit_sidecar_port() -> None:
    node = parse_config({"node": {"port": 0, "sidecar_port": 0}}).node
    assert node.port == 0 and node.effective_sidecar_port == 0


def test_absolute_and_home_relative_asset_dir(tmp_path: Path) -> None:
    absolute = tmp_path / "elsewhere"
    config = parse_config({"sidecar": {"asset_dir": str(absolute)}}, base_dir=tmp_path / "x")
    assert config.sidecar.asset_dir == absolute
    home = parse_config({"sidecar": {"asset_dir": "~/assets"}}).sidecar.asset_dir
    assert home == Path.home() / "assets"


def test_resolve_path_uses_the_config_folder(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.resolve_path("node.db") == tmp_path / "node.db"
    assert config.resolve_path(tmp_path / "a" / "b.db") == tmp_path / "a" / "b.db"


def test_overrides_with_dataclasses_replace() -> None:
    config = default_config()
    changed = dataclasses.replace(config, node=dataclasses.replace(config.node, port=9100))
    assert changed.node.port == 9100
    assert changed.node.effective_sidecar_port == 9101
    assert config.node.port == 9000


def test_config_is_convertible_with_asdict() -> None:
    config = parse_config(skill(tags=["a"], input_schema={"x": "any"}))
    data = dataclasses.asdict(config)
    assert data["skills"]["echo"]["input_schema"] == {"x": "any"}
    assert isinstance(Config(), Config)


def test_every_schema_type_is_accepted() -> None:
    schema = {f"f{i}": name for i, name in enumerate(SCHEMA_TYPES)}
    parsed = parse_config(skill(input_schema=schema, output_schema=schema)).skills["echo"]
    assert parsed.input_schema == schema == parsed.output_schema


def test_description_of_exactly_256_characters_is_accepted() -> None:
    assert len(parse_config(skill(description="x" * 256)).skills["echo"].description) == 256


@pytest.mark.parametrize("name", ["a", "echo", "0day", "translate-and-summarize", "a" * 64])
def test_valid_skill_names(name: str) -> None:
    data = {"skills": {name: {"handler": "s.py:h"}}}
    assert list(parse_config(data).skills) == [name]


# --- parse_hostport -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9000", ("127.0.0.1", 9000)),
        ("localhost:1", ("localhost", 1)),
        ("node-1.example.test:65535", ("node-1.example.test", 65535)),
        ("[::1]:9000", ("::1", 9000)),
        ("[2001:db8::7]:9001", ("2001:db8::7", 9001)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "localhost",
        ":9000",
        "localhost:",
        "localhost:0",
        "localhost:65536",
        "localhost:-1",
        "localhost:+9",
        "localhost:90a",
        "::1:9000",
        "[::1]9000",
        "[nothost]:9000",
        "bad host:9000",
        "http://x:9000",
    ],
)
def test_parse_hostport_rejects_garbage(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--bootstrap: "):
        parse_hostport(text, source="--bootstrap")


# --- errors -------------------------------------------------------------------------------


def parse_error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="knarr.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("knarr.toml: ")
    return message


@pytest.mark.parametrize(
    ("data", "key", "detail"),
    [
        # unknown keys and sections
        ({"node": {"prot": 1}}, "node.prot", 'unknown key; did you mean "node.port"?'),
        ({"network": {"bootstrp": []}}, "network.bootstrp", 'did you mean "network.bootstrap"'),
        ({"sidecar": {"dir": "x"}}, "sidecar.dir", 'expected one of "asset_dir"'),
        (skill(visiblity="public"), "skills.echo.visiblity", '"skills.echo.visibility"?'),
        (skill(name="echo"), "skills.echo.name", "unknown key"),
        ({"nodes": {}}, "nodes", 'unknown section; did you mean "node"?'),
        ({"port": 9000}, "port", 'did you mean "node.port" (under [node])?'),
        ({"zzz": 1}, "zzz", 'unknown top-level key; expected one of "node", "network"'),
        # wrong types
        ({"node": 3}, "node", "expected a table, got an integer 3"),
        ({"node": {"port": "9000"}}, "node.port", 'expected an integer, got a string "9000"'),
        ({"node": {"port": True}}, "node.port", "expected an integer, got a boolean true"),
        ({"node": {"port": 9000.0}}, "node.port", "expected an integer, got a float 9000.0"),
        ({"node": {"host": 1}}, "node.host", "expected a string, got an integer 1"),
        ({"node": {"storage": ""}}, "node.storage", "expected a non-empty string"),
        (
            {"network": {"upnp": "yes"}},
            "network.upnp",
            'expected true or false, got a string "yes"',
        ),
        ({"network": {"upnp": 1}}, "network.upnp", "expected true or false, got an integer 1"),
        ({"network": {"rate_limit": True}}, "network.rate_limit", "expected a number, got a bool"),
        ({"network": {"bootstrap": "127.0.0.1:9000"}}, "network.bootstrap", "expected an array"),
        ({"network": {"bootstrap": [9000]}}, "network.bootstrap[0]", "expected a string"),
        (skill(tags="nlp"), "skills.echo.tags", "expected an array of strings, got a string"),
        (skill(tags=["ok", 3]), "skills.echo.tags[1]", "expected a string, got an integer 3"),
        (skill(input_schema=["text"]), "skills.echo.input_schema", "expected a table"),
        (skill(price="free"), "skills.echo.price", 'expected a number, got a string "free"'),
        (skill(price=float("nan")), "skills.echo.price", "expected a finite number"),
        ({"skills": {"echo": "x.py:h"}}, "skills.echo", "expected a table, got a string"),
        ({"skills": []}, "skills", "expected a table, got an array"),
        ({"bridges": {"python3 s.py": "30"}}, 'bridges."python3 s.py"', "expected a number"),
        # ports, sizes, timeouts and other ranges
        ({"node": {"port": -1}}, "node.port", "expected an integer from 0 to 65535"),
        ({"node": {"port": 65536}}, "node.port", "got 65536"),
        ({"node": {"sidecar_port": -5}}, "node.sidecar_port", "from 0 to 65535"),
        ({"node": {"sidecar_port": 70000}}, "node.sidecar_port", "got 70000"),
        ({"node": {"port": 65535}}, "node.sidecar_port", "port + 1 = 65536 is out of range"),
        ({"node": {"port": 0}}, "node.sidecar_port", "must be set when node.port is 0"),
        ({"node": {"sidecar_port": 9000}}, "node.sidecar_port", "also node.port"),
        ({"node": {"max_asset_size": -1}}, "node.max_asset_size", "expected an integer >= 1"),
        ({"node": {"max_asset_size": 0}}, "node.max_asset_size", "got 0"),
        ({"node": {"max_task_timeout": -1}}, "node.max_task_timeout", "(0 = unlimited), got -1"),
        ({"network": {"clock_skew": 0}}, "network.clock_skew", "expected a number > 0"),
        ({"network": {"subnet_limit": 0}}, "network.subnet_limit", "expected an integer >= 1"),
        ({"network": {"rate_limit": -2.5}}, "network.rate_limit", "got -2.5"),
        ({"network": {"rate_burst": 0}}, "network.rate_burst", "got 0"),
        (skill(price=-1), "skills.echo.price", "expected a number >= 0, got -1"),
        (skill(max_input_size=-1), "skills.echo.max_input_size", "expected an integer >= 1"),
        ({"bridges": {"python3 s.py": 0}}, 'bridges."python3 s.py"', "> 0 (seconds), got 0"),
        ({"bridges": {"python3 s.py": -3}}, 'bridges."python3 s.py"', "got -3"),
        ({"bridges": {"": 30}}, 'bridges.""', "expected an MCP server command"),
        ({"bridges": {"python3 'x.py": 30}}, 'bridges."python3 \'x.py"', "No closing quotation"),
        # hosts and bootstrap entries
        ({"node": {"host": "0.0.0.0:9000"}}, "node.host", "without a port"),
        ({"node": {"advertise_host": "bad host"}}, "node.advertise_host", '"bad host"'),
        ({"network": {"bootstrap": ["nohost"]}}, "network.bootstrap[0]", 'got "nohost"'),
        (
            {"network": {"bootstrap": ["127.0.0.1:9000", "127.0.0.1:0"]}},
            "network.bootstrap[1]",
            "out of range 1-65535",
        ),
        ({"network": {"bootstrap": ["::1:9000"]}}, "network.bootstrap[0]", "need brackets"),
        # handlers
        (skill(handler="skills/echo.py"), "skills.echo.handler", '(no ":")'),
        (skill(handler="skills/echo:handle"), "skills.echo.handler", 'must end in ".py"'),
        (skill(handler="skills/.py:handle"), "skills.echo.handler", 'must end in ".py"'),
        (skill(handler="skills/echo.py:"), "skills.echo.handler", "not a Python function name"),
        (skill(handler="echo.py:1x"), "skills.echo.handler", '"1x" is not a Python function'),
        (skill(handler=3), "skills.echo.handler", "expected a string"),
        ({"skills": {"echo": {}}}, "skills.echo.handler", 'missing; expected "path/to/file.py'),
        # skill names, descriptions, schemas, visibility
        ({"skills": {"Echo": {"handler": "e.py:h"}}}, "skills.Echo", 'invalid skill name "Echo"'),
        ({"skills": {"-echo": {"handler": "e.py:h"}}}, "skills.-echo", "invalid skill name"),
        ({"skills": {"a_b": {"handler": "e.py:h"}}}, "skills.a_b", "invalid skill name"),
        ({"skills": {"a.b": {"handler": "e.py:h"}}}, 'skills."a.b"', "invalid skill name"),
        ({"skills": {"a" * 65: {"handler": "e.py:h"}}}, "skills." + "a" * 65, "at most 64"),
        (
            skill(description="x" * 257),
            "skills.echo.description",
            "at most 256 characters, got 257",
        ),
        (
            skill(input_schema={"text": "str"}),
            "skills.echo.input_schema.text",
            'expected one of "string", "number", "integer", "boolean", "object", "array", "any", '
            'got "str" (did you mean "string"?)',
        ),
        (skill(output_schema={"n": 1}), "skills.echo.output_schema.n", "got an integer 1"),
        (
            skill(visibility="secret"),
            "skills.echo.visibility",
            'expected one of "public", "private", "whitelist", got "secret"',
        ),
        (skill(visibility="whitelist"), "skills.echo.allowed_nodes", "required when visibility"),
        (
            skill(visibility="whitelist", allowed_nodes=[]),
            "skills.echo.allowed_nodes",
            'required when visibility = "whitelist"',
        ),
        (
            skill(visibility="whitelist", allowed_nodes=[NODE_A, "abc123"]),
            "skills.echo.allowed_nodes[1]",
            'expected a node id of 64 hex characters, got "abc123"',
        ),
        (
            skill(visibility="whitelist", allowed_nodes=["g" * 64]),
            "skills.echo.allowed_nodes[0]",
            "64 hex characters",
        ),
        (
            skill(allowed_nodes=[NODE_A]),
            "skills.echo.allowed_nodes",
            'only applies when visibility = "whitelist"',
        ),
    ],
)
def test_errors_name_the_file_and_key(data: dict[str, Any], key: str, detail: str) -> None:
    message = parse_error(data)
    assert message.startswith(f"knarr.toml: {key}: "), message
    assert detail in message, message


def test_exact_message_for_a_bad_visibility() -> None:
    assert parse_error(skill(visibility="secret")) == (
        'knarr.toml: skills.echo.visibility: expected one of "public", "private", '
        '"whitelist", got "secret"'
    )


def test_long_values_are_shortened_in_messages() -> None:
    message = parse_error(skill(visibility="x" * 500))
    assert len(message) < 200


def test_config_error_is_a_knarr_error() -> None:
    assert issubclass(ConfigError, KnarrError)


# --- files --------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "knarr.toml"
    with pytest.raises(ConfigError, match="file not found") as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^{tmp_path}: is a directory"):
        load_config(tmp_path)


def test_toml_syntax_error_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nport = 9000\nhost = "0.0.0.0\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in message and "column" in message
    assert "\n" not in message


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "knarr.toml"
    path.write_bytes(b'[node]\nhost = "\xff"\n')
    with pytest.raises(ConfigError, match=f"^{path}: not valid UTF-8"):
        load_config(path)


def test_file_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "knarr.toml"
    path.write_bytes(b"\xef\xbb\xbf[node]\nport = 9100\n")
    assert load_config(path).node.port == 9100


def test_errors_in_a_file_name_the_path_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, '[skills.echo]\nhandler = "skills/echo.py:handle"\nvisibility = "secret"\n')
    with pytest.raises(ConfigError) as info:
        load_config("knarr.toml")
    assert str(info.value).startswith("knarr.toml: skills.echo.visibility: expected one of")


def test_relative_path_gives_an_absolute_base_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "proj").mkdir()
    write(tmp_path / "proj", "")
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("proj") / "knarr.toml")
    assert config.path == Path("proj") / "knarr.toml"
    assert config.base_dir == tmp_path / "proj"
    assert config.sidecar.asset_dir == tmp_path / "proj" / "assets"


# --- check_handlers -----------------------------------------------------------------------


def test_check_handlers_accepts_existing_files(tmp_path: Path) -> None:
    (tmp_path / "skills").mkdir()
    (tmp_path / "skills" / "echo.py").write_text("async def handle(d): return d\n")
    config = load_config(write(tmp_path, '[skills.echo]\nhandler = "skills/echo.py:handle"\n'))
    check_handlers(config)


def test_check_handlers_does_not_import_the_handler(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text("raise SystemExit('imported')\n")
    config = load_config(write(tmp_path, '[skills.boom]\nhandler = "boom.py:nothing"\n'))
    check_handlers(config)


def test_missing_handler_file_is_only_reported_by_check_handlers(tmp_path: Path) -> None:
    path = write(tmp_path, '[skills.echo]\nhandler = "skills/echo.py:handle"\n')
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        check_handlers(config)
    message = str(info.value)
    assert message.startswith(f"{path}: skills.echo.handler: handler file not found: ")
    assert str(tmp_path / "skills" / "echo.py") in message
    assert '"skills/echo.py:handle"' in message


def test_check_handlers_rejects_a_directory(tmp_path: Path) -> None:
    (tmp_path / "pkg.py").mkdir()
    config = parse_config({"skills": {"x": {"handler": "pkg.py:h"}}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^<defaults>: skills\.x\.handler: handler file"):
        check_handlers(config)
