"""One node on one namespace host, driven by JSON lines on stdin.

Usage (inside a namespace)::

    python -m tests.netns.node_process --index I --host ADDR [--bootstrap ADDR:PORT]
        [--loss FRACTION] [--delay-ms MIN MAX] [--seed S]

Binds ``ADDR:9000``, joins through ``--bootstrap``, announces ``skill-I`` (tag
``netns``) and prints one ready line ``{"ready": true, "node_id", "address"}``. Then one
JSON reply line per JSON command line:

- ``{"op": "find", "name": N}`` or ``{"op": "find", "tag": T}`` →
  ``{"found": ["<provider id>:<skill>", ...]}`` (sorted)
- ``{"op": "announce", "name": N, "tags": [...]}`` → ``{"announced": N}``
- ``{"op": "stats"}`` → ``{"table": [peer addresses], "records": n, "unsettled": [names
  of this node's records that maintenance will soon store again], ...}``
- ``{"op": "quit"}`` → ``{"bye": true}``, then the node stops.

With ``--loss`` / ``--delay-ms`` the UDP network is wrapped in ``ImpairedNetwork``, which
drops and delays this node's outgoing datagrams (the kernel here has no netem).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
from typing import Any

from knarr.errors import BootstrapFailed
from knarr.node.dht import DhtSettings
from knarr.node.node import Node
from knarr.node.transport import DatagramNetwork, ImpairedNetwork, UdpNetwork

PORT = 9000
MAINTENANCE_INTERVAL = 0.5
JOIN_ATTEMPTS = 10


def sheet(name: str, tags: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "version": "1.0.0",
        "description": f"{name}, served from a network namespace",
        "tags": tags,
        "input_schema": {"text": "string"},
        "output_schema": {"text": "string"},
    }


def network(args: argparse.Namespace) -> DatagramNetwork:
    if not args.loss and not args.delay_ms:
        return UdpNetwork()
    rng = random.Random(args.seed)
    low, high = (ms / 1000 for ms in args.delay_ms or (0, 0))
    return ImpairedNetwork(UdpNetwork(), loss=args.loss, delay=lambda: rng.uniform(low, high),
                           rng=rng)


async def join(node: Node, bootstrap: str) -> None:
    """Join, retrying a few times: under injected loss every ping may be dropped."""
    for attempt in range(JOIN_ATTEMPTS):
        try:
            await node.join([bootstrap])
            return
        except BootstrapFailed:
            if attempt == JOIN_ATTEMPTS - 1:
                raise


async def answer(node: Node, command: dict[str, Any]) -> dict[str, Any]:
    op = command.get("op")
    if op == "find":
        if "name" in command:
            records = await node.find_skills(command["name"])
        else:
            records = await node.find_skills(tag=command["tag"])
        return {"found": sorted(f"{r.provider_id.hex()}:{r.name}" for r in records)}
    if op == "announce":
        await node.announce(sheet(command["name"], list(command.get("tags", []))))
        return {"announced": command["name"]}
    if op == "stats":
        stats = node.dht.stats
        return {
            "table": sorted(f"{e.contact.host}:{e.contact.port}"
                            for e in node.dht.table.contacts()),
            "records": len(node.dht.records),
            "unsettled": node.dht.unsettled(),
            "sent": stats.sent,
            "received": stats.received,
            "timeouts": stats.timeouts,
        }
    return {"error": f"unknown command {command!r}"}


async def serve(args: argparse.Namespace) -> None:
    settings = DhtSettings(maintenance_interval=MAINTENANCE_INTERVAL)
    node = Node(args.host, PORT, settings=settings, network=network(args))
    await node.start()
    try:
        if args.bootstrap:
            await join(node, args.bootstrap)
        await node.announce(sheet(f"skill-{args.index}", ["netns"]))
        emit({"ready": True, "node_id": node.node_id, "address": f"{args.host}:{node.port}"})
        stdin = asyncio.StreamReader()
        pipe, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin
        )
        try:
            while line := await stdin.readline():
                command = json.loads(line)
                if command.get("op") == "quit":
                    emit({"bye": True})
                    break
                try:
                    emit(await answer(node, command))
                except Exception as exc:  # report it to the test, keep serving
                    logging.exception("command %r failed", command)
                    emit({"error": f"{type(exc).__name__}: {exc}"})
        finally:
            pipe.close()
    finally:
        await node.stop()


def emit(reply: dict[str, Any]) -> None:
    print(json.dumps(reply), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="A Knarr node on a namespace host.")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--bootstrap")
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--delay-ms", type=float, nargs=2, metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format=f"h{args.index} %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
