"""The ``knarr`` command: one subcommand per module in ``knarr.cli``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from knarr import __version__
from knarr.errors import KnarrError

if TYPE_CHECKING:
    from knarr.node.sidecar import download_asset, upload_asset

log = logging.getLogger("knarr.cli")

__all__ = ["download_asset", "main", "upload_asset"]


def __getattr__(name: str) -> object:
    # ``from knarr.cli.main import upload_asset, download_asset`` (the product's import
    # path) without importing aiohttp on every start of the command.
    if name in ("upload_asset", "download_asset"):
        from knarr.node import sidecar

        return getattr(sidecar, name)
    raise AttributeError(name)


def build_parser() -> argparse.ArgumentParser:
    from knarr.cli import books, client, console, demo, init, mail, serve, thrall

    parser = argparse.ArgumentParser(
        prog="knarr",
        description="Peer-to-peer exchange protocol for autonomous agents.",
    )
    parser.add_argument("--version", action="version", version=f"knarr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    init.add_parser(sub)
    serve.add_parser(sub)
    client.add_parsers(sub)
    books.add_parsers(sub)
    console.add_parser(sub)
    mail.add_parsers(sub)
    thrall.add_parsers(sub)
    demo.add_parser(sub)
    return parser


def configure_logging(level: str, *, structured: bool = False) -> None:
    """Human log lines, or ``key=value`` lines for servers (``--headless``)."""
    fmt = (
        "ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s"
        if structured else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), format=fmt, stream=sys.stderr
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    configure_logging(
        getattr(args, "log_level", "WARNING"), structured=getattr(args, "headless", False)
    )
    try:
        return int(asyncio.run(args.run(args)) or 0)
    except KnarrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            log.debug("traceback", exc_info=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
