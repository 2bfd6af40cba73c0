"""A node in its own process, for the multi-process tests.

Usage: python -m tests.node.peer_process NAME [BOOTSTRAP]. Prints one JSON line
``{"node_id", "port"}`` when ready, then answers one JSON line per stdin command:
``find-name X`` / ``find-tag T`` → the sorted list of "provider:skill" strings found;
``quit`` stops the node.
"""

from __future__ import annotations

import asyncio
import json
import sys

from knarr.node.node import Node


async def main(name: str, bootstrap: list[str]) -> None:
    node = Node("127.0.0.1", 0)
    await node.start()
    if bootstrap:
        await node.join(bootstrap)
    await node.announce({"name": name, "description": "process peer", "tags": ["net", "proc"]})
    print(json.dumps({"node_id": node.node_id, "port": node.port}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line == "quit":
            break
        verb, _, arg = line.partition(" ")
        records = await (node.find_skills(arg) if verb == "find-name"
                         else node.find_skills(tag=arg))
        print(json.dumps(sorted(f"{r.provider_id.hex()}:{r.name}" for r in records)), flush=True)
    await node.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
