"""``knarr query`` and ``knarr request``: a short-lived read-only node that asks the
network and prints what it found."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from knarr.config import parse_hostport
from knarr.errors import ConfigError, KnarrError, NetworkError, SkillNotFound
from knarr.node.assets import asset_refs, asset_uri
from knarr.node.dht import DhtSettings
from knarr.node.node import Node
from knarr.node.records import SkillRecord


def _common(p: argparse.ArgumentParser, *, timeout: float) -> None:
    p.add_argument("--bootstrap", required=True, help="bootstrap peer host:port (required)")
    p.add_argument("--port", type=int, default=0, help="local listen port (default: random)")
    p.add_argument(
        "--timeout", type=float, default=timeout, help=f"timeout in seconds (default: {timeout:g})"
    )
    p.add_argument("--json", action="store_true", help="print raw JSON")
    p.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")


def add_parsers(sub: Any) -> None:
    q = sub.add_parser(
        "query", help="search the network for skills",
        description="Find the providers of a skill, by name or by tag.",
    )
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--name", help="skill name to look for")
    which.add_argument("--tag", help="tag to look for")
    _common(q, timeout=5.0)
    q.set_defaults(run=run_query)

    r = sub.add_parser(
        "request", help="run a skill on the network",
        description="Find a provider of a skill and run it with the given input.",
    )
    r.add_argument("--skill", required=True, help="skill name to execute")
    r.add_argument(
        "--input", required=True, help='JSON object with the task input, e.g. \'{"text": "hi"}\''
    )
    r.add_argument("--output-dir", help="download knarr-asset:// results into this folder")
    _common(r, timeout=30.0)
    r.set_defaults(run=run_request)


@asynccontextmanager
async def client_node(args: argparse.Namespace) -> AsyncIterator[Node]:
    """A read-only node (never added to others' routing tables) joined to the network."""
    bootstrap = [e.strip() for e in args.bootstrap.split(",") if e.strip()]
    for entry in bootstrap:
        parse_hostport(entry, source="--bootstrap")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: expected 0..65535, got {args.port}")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout: expected a positive number of seconds, got {args.timeout}")
    # A client that only talks to loopback peers listens on loopback only.
    local = all(
        parse_hostport(e, source="--bootstrap")[0] in ("127.0.0.1", "localhost", "::1")
        for e in bootstrap
    )
    host = "127.0.0.1" if local and bootstrap else "0.0.0.0"
    node = Node(host, args.port, settings=DhtSettings(read_only=True))
    await node.start()
    try:
        try:
            async with asyncio.timeout(args.timeout):  # the join is part of the wait
                await node.join(bootstrap)
        except TimeoutError:
            raise NetworkError(
                f"no bootstrap peer answered within {args.timeout:g} s"
            ) from None
        yield node
    finally:
        await node.stop(grace=0)


class SidecarMissing(NetworkError):
    """A provider cannot take or give files: it runs without a sidecar."""


def _short(node_id: str) -> str:
    return node_id[:16] + "..."


def print_table(records: list[SkillRecord]) -> None:
    rows = [("SKILL", "PROVIDER", "HOST", "DESCRIPTION")] + [
        (r.name, _short(r.provider_id.hex()), f"{r.host}:{r.port}", r.description)
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)]
        print("  ".join([*cells, row[3]]).rstrip())


async def run_query(args: argparse.Namespace) -> int:
    async with client_node(args) as node:
        try:
            async with asyncio.timeout(args.timeout):
                records = await (
                    node.find_skills(args.name) if args.name else node.find_skills(tag=args.tag)
                )
        except TimeoutError:
            raise KnarrError(f"the network did not answer within {args.timeout:g} s") from None
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
    elif records:
        print_table(records)
    what = f"skill {args.name!r}" if args.name else f"tag {args.tag!r}"
    if not records:
        print(f"No providers found for {what}.", file=sys.stderr)
        return 1
    return 0


def parse_input(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--input is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"--input must be a JSON object, got {type(value).__name__}")
    return value


FILE_PREFIX = "@"
PROGRESS_OVER = 4 * 2**20


def input_files(data: Mapping[str, Any]) -> dict[str, Path]:
    """Top-level ``"@path"`` values: local files to upload to the provider's sidecar."""
    files: dict[str, Path] = {}
    for key, value in data.items():
        if isinstance(value, str) and value.startswith(FILE_PREFIX) and len(value) > 1:
            path = Path(value[1:]).expanduser()
            if not path.is_file():
                raise ConfigError(f"--input: {key}: file not found: {path}")
            files[key] = path
    return files


def progress_printer(label: str, total: int) -> Callable[[int, int], None] | None:
    """Progress on stderr for transfers over a few megabytes (one line, updated)."""
    if total < PROGRESS_OVER:
        return None
    shown = [-1]
    tty = sys.stderr.isatty()

    def report(done: int, size: int) -> None:
        size = size or total
        percent = min(100, done * 100 // max(size, 1))
        step = percent if tty else percent // 25 * 25
        if step == shown[0]:
            return
        shown[0] = step
        line = f"{label}: {percent:3d}% ({done / 2**20:.1f}/{size / 2**20:.1f} MiB)"
        print(("\r" + line) if tty else line, end="" if tty and percent < 100 else "\n",
              file=sys.stderr, flush=True)

    return report


def uploader(node: Node, files: Mapping[str, Path]) -> Callable[
    [SkillRecord, dict[str, Any]], Awaitable[dict[str, Any]]
]:
    """A ``prepare`` hook that uploads the files to each provider tried."""

    async def prepare(record: SkillRecord, data: dict[str, Any]) -> dict[str, Any]:
        if not files:
            return data
        from knarr.node.sidecar import upload_file
        from knarr.node.taskchannel import provider_address

        if not record.sidecar_port:
            raise SidecarMissing(f"provider {_short(record.provider_id.hex())} has no sidecar")
        host = await provider_address(record.host, record.sidecar_port, node.client.resolver)
        for key, path in files.items():
            size = path.stat().st_size
            digest, _ = await upload_file(
                host, record.sidecar_port, path, node.identity,
                progress=progress_printer(f"Uploading {path.name}", size),
            )
            data[key] = asset_uri(digest)
        return data

    return prepare


async def download_outputs(
    node: Node, record: SkillRecord, output: Mapping[str, Any], folder: Path
) -> dict[str, Path]:
    """Download every top-level ``knarr-asset://`` value of a result into ``folder``
    (made beforehand by :func:`output_folder`)."""
    from knarr.node.sidecar import download_file, head_asset
    from knarr.node.taskchannel import provider_address

    refs = asset_refs(output)
    if refs and not record.sidecar_port:
        raise SidecarMissing("the result names assets but the provider has no sidecar")
    saved: dict[str, Path] = {}
    if not refs:
        return saved
    host = await provider_address(record.host, record.sidecar_port, node.client.resolver)
    for key, digest in refs.items():
        size = await head_asset(host, record.sidecar_port, digest, node.identity) or 0
        saved[key] = await download_file(
            host, record.sidecar_port, digest, node.identity, folder / digest,
            progress=progress_printer(f"Downloading {key}", size),
        )
    return saved


def _print_fields(output: Mapping[str, Any], indent: str = "  ") -> None:
    for key, value in output.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        print(f"{indent}{key}: {shown}")


def output_folder(text: str) -> Path:
    """``--output-dir``, made now: a folder that cannot be made must stop the request
    before it runs (and is paid for), not lose its result afterwards."""
    folder = Path(text)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--output-dir: cannot use {text!r}: {exc.strerror or exc}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--output-dir: cannot write to {text!r}")
    return folder


async def run_request(args: argparse.Namespace) -> int:
    data = parse_input(args.input)
    files = input_files(data)
    folder = output_folder(args.output_dir) if args.output_dir else None
    saved: dict[str, Path] = {}
    unsaved: Exception | None = None  # the task completed but its files were not saved
    try:
        async with client_node(args) as node:
            record, output = await node.request_detailed(
                args.skill, data, timeout=args.timeout, prepare=uploader(node, files)
            )
            if folder is not None:
                try:
                    saved = await download_outputs(node, record, output, folder)
                except (KnarrError, OSError) as exc:
                    unsaved = exc
    except (SkillNotFound, KnarrError) as exc:
        if isinstance(exc, ConfigError):
            raise
        if args.json:
            code = getattr(exc, "code", type(exc).__name__)
            print(json.dumps({"status": "failed", "error": str(exc), "code": code}))
        else:
            print("Status: failed")
            print(f"Error: {exc}")
        return 1
    if args.json:
        print(json.dumps({
            "status": "completed", "skill": args.skill,
            "provider": record.provider_id.hex(), "output": output,
            "downloaded": {k: str(v) for k, v in saved.items()},
            **({"download_error": str(unsaved)} if unsaved is not None else {}),
        }, indent=2))
    else:
        print("Status: completed")
        print("Output:")
        _print_fields(output)
        for key, path in saved.items():
            print(f"Saved {key}: {path}")
        if unsaved is not None:
            print(f"Download failed: {unsaved}")
    return 0 if unsaved is None else 1
