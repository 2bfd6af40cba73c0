"""A provider node in its own process, for the crash tests (the test SIGKILLs it).

Usage: python -m tests.node.provider_process DB GATES BOOTSTRAP [--freeze-after-booking N]
                                              [--reconcile-grace SECONDS]

Serves ``gated`` (price 1): the handler writes ``GATES/started-<text>`` and returns once
``GATES/go-<text>`` exists. With ``--freeze-after-booking N`` the whole process stops
dead right after booking its N-th receipt, before the result is sent, and writes
``GATES/booked-N``. ``--reconcile-grace`` sets how old a receipt must be before a
settlement's reconciliation may void it (the test cannot wait two minutes). Prints one
JSON line ``{"node_id", "port"}`` once serving; SIGTERM stops it cleanly.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from knarr.node.economy import Receipt
from knarr.node.ledger import CreditBooks
from knarr.node.node import Node

POLL = 0.01


def freeze_after_booking(books: CreditBooks, nth: int, gates: Path) -> None:
    real = books.book
    booked = 0

    def book(receipts: Sequence[Receipt]) -> None:
        nonlocal booked
        real(receipts)
        booked += len(receipts)
        if booked >= nth:
            (gates / f"booked-{nth}").touch()
            while True:  # a frozen process: the event loop never runs again
                time.sleep(POLL)

    books.book = book  # type: ignore[method-assign]


async def main(db: str, gates: Path, bootstrap: str, freeze_at: int,
               grace: float | None) -> None:
    async def gated(data: dict[str, Any]) -> dict[str, Any]:
        text = str(data["text"])
        (gates / f"started-{text}").touch()
        while not (gates / f"go-{text}").exists():
            await asyncio.sleep(POLL)
        return {"text": text.upper()}

    node = Node("127.0.0.1", 0, storage=db)
    if grace is not None:
        node.settlements.grace = grace
    if freeze_at:
        books = node.tasks._accounting
        assert isinstance(books, CreditBooks)
        freeze_after_booking(books, freeze_at, gates)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await node.start()
    await node.join([bootstrap])
    node.register_handler("gated", gated)
    await node.announce({"name": "gated", "description": "waits for the test", "price": 1,
                         "input_schema": {"text": "string"}})
    print(json.dumps({"node_id": node.node_id, "port": node.port}), flush=True)
    await stop.wait()
    await node.stop(grace=0)


if __name__ == "__main__":
    args = sys.argv[1:]
    freeze = 0
    if "--freeze-after-booking" in args:
        at = args.index("--freeze-after-booking")
        freeze = int(args[at + 1])
        del args[at : at + 2]
    grace = None
    if "--reconcile-grace" in args:
        at = args.index("--reconcile-grace")
        grace = float(args[at + 1])
        del args[at : at + 2]
    asyncio.run(main(args[0], Path(args[1]), args[2], freeze, grace))
