"""Record the console's demo feed from a real run: five nodes on loopback, one watched.

    .venv/bin/python scripts/record_demo_feed.py [--out knarr/tui/demo_feed.jsonl]

Starts nodes in this process (never dialling the public bootstrap hosts), gives them
skills with prices and one unreliable provider, drives traffic, then records the watched
node's cockpit (its snapshots, then its live events) while a sixth node joins, calls are
made, a recipe fires and watchman reports a restart. The output replays with
``knarr console --demo`` and drives the console's tests and screenshots.

Thrall and watchman are not running here: their entries are written the way they
record them (``Node.record_journal`` for a recipe firing, ``POST /v1/watchman`` for a
supervisor event), so their panels show what they will look like.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from knarr.errors import KnarrError
from knarr.node.node import Node
from knarr.tui.feed import CockpitFeed, Recorder
from knarr.tui.model import stale_after

PAUSE = 4.0  # seconds between rounds, so the ages in the panels differ
OUT = Path(__file__).resolve().parent.parent / "knarr" / "tui" / "demo_feed.jsonl"


def sheet(name: str, description: str, price: float, tags: tuple[str, ...] = (),
          schema: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name, "version": "1.0.0", "description": description, "tags": list(tags),
        "input_schema": schema or {"text": "string"}, "output_schema": {"text": "string"},
        "price": price,
    }


async def serve(node: Node, name: str, handler: Any, **kwargs: Any) -> None:
    node.register_handler(name, handler)
    await node.announce(sheet(name, **kwargs))


async def call(node: Node, skill: str, data: dict[str, Any]) -> None:
    try:
        await node.request(skill, data, timeout=5)
    except KnarrError as exc:
        logging.warning("%s failed (as some do): %s", skill, exc)


async def watchman_event(socket: Path, **body: Any) -> None:
    connector = aiohttp.UnixConnector(path=str(socket))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post("http://cockpit/v1/watchman", json=body) as response:
            response.raise_for_status()


async def record(out: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="knarr-demo-"))
    hub = Node("127.0.0.1", 0, cockpit_dir=tmp)
    alice, bob, carol, erik = (Node("127.0.0.1", 0) for _ in range(4))
    nodes = [hub, alice, bob, carol, erik]
    for node in nodes:
        await node.start()
    seed = [f"127.0.0.1:{hub.port}"]
    for node in nodes[1:]:
        await node.join(seed)

    flaky = {"calls": 0}

    async def upper(data: dict[str, Any]) -> dict[str, Any]:
        return {"text": str(data["text"]).upper()}

    async def translate(data: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"text": f"[fr] {data['text']}"}

    async def summarize(data: dict[str, Any]) -> dict[str, Any]:
        return {"text": str(data["text"])[:24] + "…"}

    async def ocr(data: dict[str, Any]) -> dict[str, Any]:
        flaky["calls"] += 1
        if flaky["calls"] % 2 == 0:
            raise RuntimeError("scanner jammed")
        return {"text": "INVOICE 2291"}

    async def echo(data: dict[str, Any]) -> dict[str, Any]:
        return dict(data)

    await serve(alice, "upper", upper, description="Upper-cases text", price=1.0,
                tags=("text",))
    await serve(bob, "translate", translate, description="Translates text to French",
                price=2.5, tags=("text", "language"))
    await serve(bob, "summarize", summarize, description="Summarises long text",
                price=1.5, tags=("text", "llm"))
    await serve(carol, "ocr", ocr, description="Reads text from an image (unreliable)",
                price=0.5, tags=("vision",), schema={"image": "string", "lang": "string"})
    await serve(hub, "echo", echo, description="Returns its input", price=0.25,
                tags=("debug",))
    await asyncio.sleep(PAUSE)
    for node in (erik, alice):
        await node.request("echo", {"text": "ping"}, timeout=5)
    await asyncio.sleep(PAUSE)
    for text in ("hello", "knarr", "world"):
        await call(hub, "upper", {"text": text})
    await asyncio.sleep(PAUSE)
    await call(hub, "translate", {"text": "good morning"})
    await call(hub, "summarize", {"text": "a very long report about the harbour"})
    for _ in range(3):
        await call(hub, "ocr", {"image": "scan.png", "lang": "en"})
    await asyncio.sleep(PAUSE)
    await hub.find_skills(tag="speech")
    await call(hub, "transcribe", {"audio": "memo.ogg"})
    await watchman_event(tmp / "cockpit.sock", event="restart",
                         reason="health probe timed out", attempt=1, backoff_s=1.0,
                         exit_code=-9)
    hub.record_journal("recipe", "fired", {
        "recipe": "triage-mail", "trigger": "on_mail", "action": "reply",
        "detail": "hotwire rule 'greeting' matched",
    })

    # Now watch the hub's cockpit while more happens.
    buffer = io.StringIO()
    recorder = Recorder(buffer, stale=stale_after)
    feed = CockpitFeed(socket_path=tmp / "cockpit.sock", heartbeat=0.5)
    end: dict[str, int | None] = {"seq": None}
    started = time.time()
    recording = asyncio.create_task(recorder.record(feed, until_seq=lambda: end["seq"]))
    await asyncio.sleep(1.0)

    dave = Node("127.0.0.1", 0)
    await dave.start()
    nodes.append(dave)
    await dave.join(seed)
    await asyncio.sleep(0.5)
    await serve(dave, "embed", upper, description="Text embeddings (768 floats)", price=3.0,
                tags=("text", "vectors"))
    await asyncio.sleep(0.5)
    await call(hub, "embed", {"text": "harbour"})
    await asyncio.sleep(0.5)
    await call(hub, "ocr", {"image": "receipt.jpg", "lang": "en"})
    await call(hub, "upper", {"text": "fair winds"})
    await asyncio.sleep(0.5)
    await call(hub, "transcribe", {"audio": "memo2.ogg"})
    await dave.request("echo", {"text": "hi hub"}, timeout=5)
    await asyncio.sleep(0.5)
    hub.record_journal("recipe", "fired", {
        "recipe": "pay-debts", "trigger": "on_tick", "action": "settle",
        "detail": "balance with alice over 3 credits",
    })
    await hub.settle(alice.node_id)
    await asyncio.sleep(0.5)
    await watchman_event(tmp / "cockpit.sock", event="restart",
                         reason="exited with code 1", attempt=2, backoff_s=2.0, exit_code=1)
    await asyncio.sleep(0.5)
    end["seq"] = hub.events.last_seq
    await asyncio.wait_for(recording, timeout=30)
    await feed.close()
    finished = time.time()

    header = io.StringIO()
    Recorder(header, stale=stale_after).meta(
        recorded_at=started, until=finished,
        note="five nodes on loopback, then a sixth joins; recorded by "
             "scripts/record_demo_feed.py",
    )
    out.write_text(header.getvalue() + buffer.getvalue(), encoding="utf-8")
    for node in reversed(nodes):
        await node.stop(grace=1)
    print(f"wrote {out} ({out.stat().st_size} bytes, "
          f"{buffer.getvalue().count(chr(10))} items)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(record(args.out))


if __name__ == "__main__":
    main()
