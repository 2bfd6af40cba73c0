"""``knarr init DIR``: a new provider project with a config and an example skill."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from knarr.config import DEFAULT_BOOTSTRAP, parse_hostport
from knarr.errors import ConfigError

ECHO_SKILL = '''"""An example skill: returns its input text unchanged."""


async def handle(input_data: dict) -> dict:
    # input_data keys match input_schema in knarr.toml; return a dict for output_schema.
    return {"text": input_data["text"]}
'''


def config_text(port: int, bootstrap: str) -> str:
    return f'''[node]
port = {port}
host = "0.0.0.0"
storage = "node.db"
# advertise_host = "203.0.113.50"   # your public IP, if auto-detection picks the wrong one
max_task_timeout = 3600

[network]
bootstrap = ["{bootstrap}"]
upnp = true

[sidecar]
asset_dir = "assets"

[skills.echo]
handler = "skills/echo.py:handle"
description = "Echoes input text back"
tags = ["example"]
input_schema = {{text = "string"}}
output_schema = {{text = "string"}}
'''


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "init",
        help="create a provider project",
        description="Create a provider project: knarr.toml and an example skill.",
    )
    p.add_argument("directory", help="folder to create (must not already hold a project)")
    p.add_argument("--port", type=int, default=9000, help="port for the config (default: 9000)")
    p.add_argument(
        "--bootstrap", default=DEFAULT_BOOTSTRAP[0],
        help=f"bootstrap peer for the config (default: {DEFAULT_BOOTSTRAP[0]})",
    )
    p.set_defaults(run=run, log_level="WARNING")


async def run(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65534:
        raise ConfigError(f"--port: expected 1..65534, got {args.port}")
    parse_hostport(args.bootstrap, source="--bootstrap")
    if not args.directory.strip():
        raise ConfigError("the project folder name is empty (try: knarr init my-provider)")
    target = Path(args.directory)
    config = target / "knarr.toml"
    skill = target / "skills" / "echo.py"
    existing = [p for p in (config, skill) if p.exists()]
    if existing:
        raise ConfigError(
            f"{existing[0]} already exists; not overwriting an existing project "
            "(choose a new folder)"
        )
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} exists and is not a folder")
    try:
        skill.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(config_text(args.port, args.bootstrap))
        skill.write_text(ECHO_SKILL)
    except OSError as exc:
        raise ConfigError(f"cannot create the project in {target}: "
                          f"{exc.strerror or exc}") from exc
    print(f"Created project in {target}/")
    print("  knarr.toml       Node configuration")
    print("  skills/echo.py   Example skill handler")
    print()
    print("To start your node:")
    print(f"  cd {target}")
    print("  knarr serve")
    return 0
