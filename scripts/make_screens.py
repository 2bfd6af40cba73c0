"""Regenerate ``screens/*.svg``: every console panel, the detail views and the help,
from the recorded demo feed (``knarr/tui/demo_feed.jsonl``), so they are the same on
every machine.

    .venv/bin/python scripts/make_screens.py [--out screens] [--size 100x28]
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from knarr.tui.app import KnarrConsole
from knarr.tui.feed import RecordedFeed

ROOT = Path(__file__).resolve().parent.parent

SHOTS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("peers", ("1",), "Peers: the routing table, with bucket, last seen and RTT"),
    ("skills", ("2",), "Skills: served here and discovered on the network"),
    ("demand", ("3",), "Demand: queries that found no provider"),
    ("reputation", ("4",), "Reputation: providers ranked by score"),
    ("ledger", ("5",), "Ledger: receipts, with earned, spent and net in the footer"),
    ("recipes", ("6",), "Recipe firings"),
    ("watchman", ("7",), "Watchman restarts"),
    ("peer-detail", ("4", "enter"), "A peer: its skills, receipts and history"),
    ("skill-detail", ("2", "down", "down", "enter"), "A skill: schema and providers"),
    ("help", ("question_mark",), "Every key"),
)


async def shoot(keys: tuple[str, ...], size: tuple[int, int]) -> str:
    app = KnarrConsole(RecordedFeed.demo(), tick=None, blink=False, toasts=False,
                       resync_interval=0)
    async with app.run_test(size=size) as pilot:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not app.settled:
            if loop.time() > deadline:
                raise RuntimeError("the recording did not finish replaying")
            await pilot.pause(0.01)
        await pilot.press(*keys)
        await pilot.pause()
        return app.export_screenshot(title="knarr console")


async def make(out: Path, size: tuple[int, int]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, keys, caption in SHOTS:
        path = out / f"{name}.svg"
        path.write_text(await shoot(keys, size), encoding="utf-8")
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {caption}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "screens")
    parser.add_argument("--size", default="100x28", help="COLUMNSxROWS (default: 100x28)")
    args = parser.parse_args()
    columns, rows = (int(n) for n in args.size.lower().split("x"))
    asyncio.run(make(args.out, (columns, rows)))


if __name__ == "__main__":
    main()
