"""``knarr demo``: a small Knarr network on loopback, with traffic, and the console on it.

Five nodes in this process, each in a temporary data folder: sample skills with prices,
one unreliable provider, requests flowing between them, mail, and the operator console
attached to the first node. Ctrl-C stops everything and removes the folders. Nothing
leaves 127.0.0.1; the public bootstrap hosts are never dialled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knarr.config import EconomyConfig
from knarr.errors import KnarrError
from knarr.node.node import Node

log = logging.getLogger("knarr.demo")

NAMES = ("harbor", "lighthouse", "market", "smithy", "archive")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="run a small network on this machine and watch it in the console",
        description="Start five nodes on 127.0.0.1 with sample skills and steady traffic, "
        "and open the console on the first one. Ctrl-C stops it and removes everything.",
    )
    p.add_argument("--nodes", type=int, default=5, help="how many nodes (default: 5)")
    p.add_argument("--rate", type=float, default=4.0,
                   help="requests per second across the network (default: 4)")
    p.add_argument("--seconds", type=float, default=0,
                   help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--no-console", action="store_true",
                   help="print a status line instead of opening the console")
    p.add_argument("--seed", type=int, default=None, help="seed for the traffic pattern")
    p.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    p.set_defaults(run=run)


async def _upper(data: dict[str, Any]) -> dict[str, Any]:
    return {"text": str(data["text"]).upper()}


async def _count(data: dict[str, Any]) -> dict[str, Any]:
    return {"words": len(str(data["text"]).split())}


async def _add(data: dict[str, Any]) -> dict[str, Any]:
    return {"result": data["a"] + data["b"]}


def _flaky(rng: random.Random) -> Any:
    async def forecast(data: dict[str, Any]) -> dict[str, Any]:
        if rng.random() < 0.35:
            raise RuntimeError("the barometer is broken")
        return {"forecast": rng.choice(["fair winds", "squalls", "fog", "calm"])}

    return forecast


SKILLS: list[tuple[str, Any, dict[str, Any]]] = [
    ("upper", _upper, {"description": "Upper-cases text", "tags": ["text"], "price": 1.0,
                       "input_schema": {"text": "string"}, "output_schema": {"text": "string"}}),
    ("word-count", _count, {"description": "Counts words", "tags": ["text", "nlp"],
                            "price": 0.5, "input_schema": {"text": "string"},
                            "output_schema": {"words": "integer"}}),
    ("add", _add, {"description": "Adds two numbers", "tags": ["math"], "price": 0.25,
                   "input_schema": {"a": "number", "b": "number"},
                   "output_schema": {"result": "number"}}),
]


@dataclass
class DemoNetwork:
    nodes: list[Node]
    folders: list[Path]

    @property
    def console_socket(self) -> Path:
        cockpit = self.nodes[0].cockpit
        assert cockpit is not None
        return cockpit.socket_path


@contextlib.asynccontextmanager
async def demo_network(count: int, rng: random.Random) -> AsyncIterator[DemoNetwork]:
    """Start ``count`` nodes on loopback, each with its own temporary folder."""
    folders = [Path(tempfile.mkdtemp(prefix=f"knarr-demo-{NAMES[i % 5]}-"))
               for i in range(count)]
    nodes: list[Node] = []
    try:
        for i, folder in enumerate(folders):
            node = Node(
                "127.0.0.1", 0, storage=folder / "node.db", cockpit_dir=folder,
                sidecar_port=0, asset_dir=folder / "assets",
                economy=EconomyConfig(credit_limit=1_000_000),
            )
            await node.start()
            nodes.append(node)
            if i:
                await node.join([f"127.0.0.1:{nodes[0].port}"])
        for i, node in enumerate(nodes[1:], start=1):
            name, handler, sheet = SKILLS[(i - 1) % len(SKILLS)]
            node.register_handler(name, handler)
            await node.announce({"name": name, "version": "1.0.0", **sheet})
        flaky = nodes[-1]
        flaky.register_handler("forecast", _flaky(rng))
        await flaky.announce({"name": "forecast", "description": "Weather at sea (unreliable)",
                              "tags": ["weather"], "price": 2.0, "input_schema": {}})
        yield DemoNetwork(nodes, folders)
    finally:
        for node in reversed(nodes):
            with contextlib.suppress(Exception):
                await node.stop(grace=1)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


async def drive_traffic(net: DemoNetwork, rate: float, rng: random.Random) -> None:
    """Steady requests between random nodes, an unserved skill now and then, and mail."""
    skills = [s[0] for s in SKILLS] + ["forecast"]
    texts = ["fair winds and following seas", "knarr sails at dawn", "trade routes of the north"]
    tick = 0
    while True:
        await asyncio.sleep(1 / rate)
        tick += 1
        asker = rng.choice(net.nodes)
        try:
            if tick % 17 == 0:
                await asker.find_skills(rng.choice(["translate", "summarize", "ocr"]))
            elif tick % 11 == 0:
                other = rng.choice([n for n in net.nodes if n is not asker])
                asker.send_mail(other.node_id, f"cargo report #{tick}", "text")
            else:
                skill = rng.choice(skills)
                data: dict[str, Any] = {"text": rng.choice(texts)}
                if skill == "add":
                    data = {"a": rng.randint(1, 99), "b": rng.randint(1, 99)}
                await asker.request(skill, data, timeout=5)
        except KnarrError as exc:
            log.info("demo request failed: %s", exc)


async def run(args: argparse.Namespace) -> int:
    if not 2 <= args.nodes <= 50:
        raise KnarrError(f"--nodes: expected 2..50, got {args.nodes}")
    if not args.rate > 0:
        raise KnarrError(f"--rate: expected a positive number, got {args.rate}")
    if not args.seconds >= 0:  # also refuses nan
        raise KnarrError(f"--seconds: expected 0 (until Ctrl-C) or more, got {args.seconds:g}")
    rng = random.Random(args.seed)
    if logging.getLogger().level >= logging.WARNING:
        # The unreliable provider fails on purpose; its warnings would scroll the screen.
        logging.getLogger("knarr.tasks").setLevel(logging.ERROR)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with demo_network(args.nodes, rng) as net:
        traffic = asyncio.create_task(drive_traffic(net, args.rate, rng))
        try:
            if args.no_console or not sys.stdout.isatty():
                print(f"Demo network: {len(net.nodes)} nodes on 127.0.0.1; console socket "
                      f"{net.console_socket}", flush=True)
                await _wait(stop, args.seconds)
            else:
                await _console(net, stop, args.seconds)
        finally:
            traffic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await traffic
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    print("Demo stopped; temporary folders removed.")
    return 0


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    else:
        await stop.wait()


async def _console(net: DemoNetwork, stop: asyncio.Event, seconds: float) -> None:
    """Run the console app in this loop, attached to the first node's cockpit."""
    try:
        from knarr.tui.app import run_console_async
    except ImportError:
        print(f"(console not available) cockpit at {net.console_socket}")
        await _wait(stop, seconds)
        return
    if seconds > 0:
        asyncio.get_running_loop().call_later(seconds, stop.set)
    await run_console_async(socket_path=net.console_socket, stop=stop)
