"""watchman.toml parsing: the product's example, defaults, and one clear line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from knarr.errors import ConfigError
from knarr.watchman.config import (
    WatchmanConfig,
    load_watchman_config,
    parse_watchman_config,
    watchman_toml,
)

REPO = Path(__file__).resolve().parents[2]

PRODUCT_EXAMPLE = """
[node]
command = "knarr"
args = ["serve", "--data-dir", "/var/lib/knarr"]
data_dir = "/var/lib/knarr"
[health]
cockpit_url = "http://127.0.0.1:8080" # scheme + host + port matching knarr serve --cockpit PORT
health_interval = 10 # seconds between health probes
health_fail_threshold = 3 # failures before killing the node
[recovery]
max_restarts = 10
initial_backoff = 5 # seconds before first restart
max_backoff = 300 # maximum backoff between restarts
backoff_reset_uptime = 1800
[upgrade]
source = "github:knarrnet/knarr"
auto_upgrade = false # set to true to enable automatic upgrades
check_interval = 3600
drain_timeout = 60 # wait for in-flight tasks before upgrading
health_timeout = 30 # time for new version to become healthy before rollback
"""


def _load(tmp_path: Path, text: str) -> WatchmanConfig:
    path = tmp_path / "watchman.toml"
    path.write_text(text)
    return load_watchman_config(path)


def test_the_product_example_parses(tmp_path: Path) -> None:
    config = _load(tmp_path, PRODUCT_EXAMPLE)
    assert config.node.command == "knarr"
    assert config.node.argv_tail == ("serve", "--data-dir", "/var/lib/knarr")
    assert config.data_dir == Path("/var/lib/knarr")
    assert config.state_dir == Path("/var/lib/knarr/watchman")
    assert config.health.cockpit_url == "http://127.0.0.1:8080"
    assert (config.health.health_interval, config.health.health_fail_threshold) == (10.0, 3)
    assert config.recovery.max_backoff == 300.0
    assert config.upgrade.github_repo == ("knarrnet", "knarr")
    assert config.upgrade.auto_upgrade is False


def test_defaults_and_fractions(tmp_path: Path) -> None:
    config = _load(tmp_path, "[health]\nhealth_interval = 0.05\n[recovery]\ninitial_backoff = 0\n")
    assert config.health.health_interval == 0.05
    assert config.recovery.initial_backoff == 0.0
    assert config.data_dir == tmp_path  # beside the file
    assert config.node.argv_tail == ("serve", "--data-dir", str(tmp_path), "--headless")
    assert config.health.cockpit_url is None
    assert config.upgrade.check_interval == 3600.0


def test_a_folder_source_resolves_against_the_file(tmp_path: Path) -> None:
    config = _load(tmp_path, '[upgrade]\nsource = "wheels"\n')
    assert config.upgrade.source == str(tmp_path / "wheels")
    assert config.upgrade.github_repo is None


def test_shipped_examples_parse(tmp_path: Path) -> None:
    load_watchman_config(REPO / "contrib" / "watchman.toml.example")
    _load(tmp_path, watchman_toml(tmp_path))


@pytest.mark.parametrize(("text", "message"), [
    ("[health]\nhealth_interval = 0\n",
     "health.health_interval: expected a number > 0 (seconds), got 0"),
    ('[health]\nhealth_interval = "10"\n',
     'health.health_interval: expected a number of seconds, got a string ("10")'),
    ("[health]\nhealth_fail_threshold = 0\n",
     "health.health_fail_threshold: expected an integer >= 1, got 0"),
    ("[recovery]\nmax_restarts = 1.5\n",
     "recovery.max_restarts: expected an integer, got a number (1.5)"),
    ("[recovery]\ninitial_backoff = 10\nmax_backoff = 5\n",
     "recovery.max_backoff: expected a number >= recovery.initial_backoff (10), got 5"),
    ("[recovery]\nmax_restart = 3\n",
     'recovery.max_restart: unknown key; did you mean "recovery.max_restarts"?'),
    ("health_interval = 3\n",
     'health_interval: unknown section; did you mean "health.health_interval" (under [health])?'),
    ("[node]\nargs = [\"serve\", 3]\n", "node.args[1]: expected a string, got a number (3)"),
    ("[node]\ncommand = \"\"\n", 'node.command: expected a non-empty string, got ""'),
    ('[health]\ncockpit_url = "127.0.0.1:8080"\n',
     'health.cockpit_url: expected an http:// or https:// URL, got "127.0.0.1:8080"'),
    ('[health]\ncockpit_url = "http://127.0.0.1"\n',
     'health.cockpit_url: expected a port, as in "http://127.0.0.1:8080", got '
     '"http://127.0.0.1"'),
    ('[upgrade]\nsource = "github:knarrnet"\n',
     'upgrade.source: expected "github:owner/repo", got "github:knarrnet"'),
    ("[upgrade]\nauto_upgrade = 1\n", "upgrade.auto_upgrade: expected true or false"),
    ("[upgrade]\ndrain_timeout = -5\n", "upgrade.drain_timeout: expected a number > 0"),
])
def test_each_mistake_names_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert str(info.value).startswith(f"{tmp_path / 'watchman.toml'}: {message}"), info.value


def test_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_watchman_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        _load(tmp_path, "[node\n")
    with pytest.raises(ConfigError, match="is a directory"):
        load_watchman_config(tmp_path)
    with pytest.raises(ConfigError, match="node: expected a table"):
        parse_watchman_config({"node": 3}, source="x")
