"""The ``knarr`` command: one subcommand per module in ``knarr.cli``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from knarr import __version__
from knarr.errors import ConfigError, KnarrError

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


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _value(value: object) -> str:
    """A ``key=value`` value: bare if it can be, else a JSON string (quoted, escaped)."""
    text = str(value)
    if text and not any(c in text for c in ' "=\\\n\t'):
        return text
    return json.dumps(text)


class KeyValueFormatter(logging.Formatter):
    """One line of ``key=value`` fields per record, for servers (``--headless``):
    ``ts`` (UTC, ISO 8601), ``level``, ``logger``, then the record's own fields (a
    ``kv`` dict passed as ``extra``) or ``msg``. Values with spaces, quotes or ``=`` are
    JSON strings, so every line splits the same way."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        pairs: list[tuple[str, object]] = [
            ("ts", ts.replace("+00:00", "Z")), ("level", record.levelname),
            ("logger", record.name),
        ]
        fields = getattr(record, "kv", None)
        if isinstance(fields, dict):
            pairs += fields.items()
        else:
            pairs.append(("msg", record.getMessage()))
        if record.exc_info:
            pairs.append(("exc", self.formatException(record.exc_info)))
        return " ".join(f"{key}={_value(value)}" for key, value in pairs)


def configure_logging(level: str, *, structured: bool = False) -> None:
    """Human log lines, or ``key=value`` lines for servers (``--headless``)."""
    if level.upper() not in LEVELS:
        raise ConfigError(f"--log-level: expected one of {', '.join(LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        KeyValueFormatter() if structured
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports every command: Ctrl-C may come in the middle
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        return 130
    if args.command is None:
        parser.print_help()
        return 2
    try:
        configure_logging(
            getattr(args, "log_level", "WARNING"), structured=getattr(args, "headless", False)
        )
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
