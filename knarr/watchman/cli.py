"""The ``knarr-watchman`` command.

Commands import what they need when they run, so the long-running ``run`` keeps only
the supervisor's modules in memory (no aiohttp, no TUI).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from knarr.errors import KnarrError
from knarr.watchman.config import WatchmanConfig, load_watchman_config

log = logging.getLogger("knarr.watchman")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="knarr-watchman",
        description="Supervise a knarr node: crash recovery, health probes, staged upgrades.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", metavar="FILE",
                       help="watchman.toml (default: DATA_DIR/watchman.toml, or ./watchman.toml)")
    where.add_argument("--data-dir", dest="global_data_dir", metavar="DIR",
                       help="use DIR/watchman.toml")
    parser.add_argument("--log-level", default="WARNING", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("init", help="set up a production node in a data folder",
                       description="Create a data folder with a virtual environment, identity, "
                       "wallet, encrypted vault, knarr.toml and watchman.toml.")
    p.add_argument("--data-dir", required=True, help="target directory")
    p.add_argument("--force", action="store_true", help="regenerate identity even if one exists")
    p.add_argument("--wheel", metavar="PATH", type=Path,
                   help="install from a local .whl file (air-gapped)")
    p.add_argument("--github-token", help="GitHub API token (avoids rate limits)")
    thrall = p.add_mutually_exclusive_group()
    thrall.add_argument("--enable-thrall", dest="thrall", action="store_true", default=None,
                        help="enable Thrall without prompting")
    thrall.add_argument("--no-thrall", dest="thrall", action="store_false",
                        help="disable Thrall without prompting")

    sub.add_parser("run", help="run and supervise the node (foreground)")
    p = sub.add_parser("status", help="show the watchman's and the node's state")
    p.add_argument("--json", action="store_true", help="output JSON")
    sub.add_parser("stop", help="stop the watchman, which stops the node cleanly")
    p = sub.add_parser("upgrade", help="install a release and switch the node to it")
    p.add_argument("--tag", help="a specific release, e.g. v0.46.0 (default: the latest)")
    sub.add_parser("rollback", help="switch back to the version that ran before")

    p = sub.add_parser("plugin", help="manage plugins from watchman/plugins.toml")
    plugin = p.add_subparsers(dest="plugin_command", metavar="ACTION", required=True)
    plugin.add_parser("list", help="list plugins and what is installed")
    for action, text in (("install", "install one plugin now"),
                         ("enable", "mark a plugin enabled in plugins.toml"),
                         ("disable", "mark a plugin disabled in plugins.toml")):
        plugin.add_parser(action, help=text).add_argument("name")
    plugin.add_parser("sync", help="install every enabled plugin, remove disabled ones")
    return parser


def config_of(args: argparse.Namespace) -> WatchmanConfig:
    if args.config:
        return load_watchman_config(args.config)
    if args.global_data_dir:
        return load_watchman_config(Path(args.global_data_dir) / "watchman.toml")
    return load_watchman_config("watchman.toml")


async def dispatch(args: argparse.Namespace) -> int:
    if args.command == "init":
        from knarr.watchman.init import InitOptions, init_node

        return await init_node(InitOptions(
            data_dir=Path(args.data_dir), force=args.force, wheel=args.wheel,
            github_token=args.github_token, thrall=args.thrall))
    config = config_of(args)
    if args.command == "run":
        from knarr.watchman.supervisor import Supervisor

        return await Supervisor(config).run()
    if args.command == "status":
        from knarr.watchman.status import collect_status, render_status

        status = await collect_status(config)
        print(json.dumps(status, indent=2) if args.json else render_status(status))
        return 0 if status["watchman"]["running"] else 3
    if args.command == "stop":
        from knarr.watchman.status import stop_watchman

        timeout = config.upgrade.drain_timeout + config.health.kill_grace + 15
        pid = await stop_watchman(config, timeout)
        print(f"Stopped the watchman (pid {pid})" if pid else
              f"No watchman is running for {config.data_dir}")
        return 0
    if args.command == "upgrade":
        from knarr.watchman.upgrade import upgrade

        return await upgrade(config, args.tag)
    if args.command == "rollback":
        from knarr.watchman.upgrade import rollback

        return await rollback(config)
    from knarr.watchman.plugin_commands import plugin_command

    return await plugin_command(config, args.plugin_command, getattr(args, "name", None))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(asyncio.run(dispatch(args)) or 0)
    except KnarrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("traceback", exc_info=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
