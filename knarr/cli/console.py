"""``knarr console``: attach the Textual console to a running node's cockpit."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from knarr.config import load_config, parse_hostport
from knarr.errors import ConfigError
from knarr.tui.feed import CockpitFeed, CockpitUnavailable, Feed, RecordedFeed

SOCKET_NAME = "cockpit.sock"
TOKEN_NAME = "cockpit.token"
WHERE = ("start one here with `knarr serve`, or pass --socket PATH, "
         "or --cockpit HOST:PORT --token TOKEN")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "console",
        help="watch a running node: peers, skills, ledger, … live",
        description="Attach an operator console to a node's cockpit (by default the node "
        "of the project in the current folder) and show its state live.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="the node's cockpit.sock")
    where.add_argument("--cockpit", metavar="HOST:PORT",
                       help="a cockpit served with `knarr serve --cockpit PORT`")
    where.add_argument("--demo", action="store_true",
                       help="play a recording of a small network (no node needed)")
    p.add_argument("--token", help="the bearer token for --cockpit (default: "
                   "cockpit.token in --data-dir or the current folder)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="the node's data folder (where cockpit.sock is)")
    p.add_argument("--theme", choices=("dark", "light"), default="dark",
                   help="colour theme (t switches it while running; default: dark)")
    p.set_defaults(run=run)


def project_folder(data_dir: str | None) -> Path:
    """Where the node of this project keeps its data: --data-dir, else the folder of
    the database named by ./knarr.toml, else the current folder (beside ./node.db)."""
    if data_dir:
        return Path(data_dir).absolute()
    if Path("knarr.toml").is_file():
        config = load_config("knarr.toml")
        storage = config.node.storage
        if storage != ":memory:":
            return config.resolve_path(storage).absolute().parent
    return Path.cwd()


def make_feed(args: argparse.Namespace) -> Feed:
    """The feed the arguments name (not yet connected)."""
    if args.demo:
        return RecordedFeed.demo(pace=1.0, hold=True)
    if args.cockpit:
        host, port = parse_hostport(args.cockpit, source="--cockpit")
        token = args.token
        if token is None:
            path = project_folder(args.data_dir) / TOKEN_NAME
            if not path.is_file():
                raise ConfigError(f"--cockpit needs --token: the node keeps it in "
                                  f"{TOKEN_NAME} in its data folder")
            token = path.read_text().strip()
        return CockpitFeed(host=host, port=port, token=token)
    path = Path(args.socket) if args.socket else project_folder(args.data_dir) / SOCKET_NAME
    if not path.exists():
        raise CockpitUnavailable(f"no node is running here: {path} does not exist; {WHERE}")
    return CockpitFeed(socket_path=path)


async def open_feed(args: argparse.Namespace) -> Feed:
    """The feed, checked: a cockpit that answers and accepts us."""
    feed = make_feed(args)
    if isinstance(feed, CockpitFeed):
        try:
            await feed.probe()
        except CockpitUnavailable as exc:
            await feed.close()
            raise CockpitUnavailable(f"{exc} (is the node running?)") from None
        except BaseException:
            await feed.close()
            raise
    return feed


async def run(args: argparse.Namespace) -> int:
    feed = await open_feed(args)
    from knarr.tui.app import run_console_async  # Textual loads only for this command

    await run_console_async(feed=feed, theme=args.theme)
    return 0
