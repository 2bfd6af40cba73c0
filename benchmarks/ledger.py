"""The provider's books: what booking one served task costs as the books grow.

A provider books every result it sends (a receipt row and two ledger rows, in the task
channel's group commit) before the result leaves. This measures ``Ledger.record_many``
on a real SQLite file (WAL, as a node opens it) in batches of ``--batch`` receipts, as
the books grow to ``--receipts``: wall time and CPU time per receipt, per slice of the
run. Receipts are signed before the clock starts; only booking is timed.

    .venv/bin/python benchmarks/ledger.py [--receipts 100000] [--batch 24] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from knarr.node.economy import Receipt, sign_receipt  # noqa: E402
from knarr.node.identity import Identity  # noqa: E402
from knarr.node.ledger import Ledger  # noqa: E402
from knarr.node.store import Store  # noqa: E402


def receipts(provider: Identity, requester: Identity, n: int, start: int) -> list[Receipt]:
    return [
        sign_receipt(
            provider, task=(start + i).to_bytes(16, "big"), skill="echo", price=1_000_000,
            requester_key=requester.public_key, input_hash=os.urandom(32),
            output_hash=os.urandom(32), time_ms=int(time.time() * 1000), outcome="completed",
            duration_ms=1,
        )
        for i in range(n)
    ]


def run(total: int, batch: int, slices: int, folder: str) -> list[dict[str, float]]:
    provider, requester = Identity.generate(), Identity.generate()
    store = Store(os.path.join(folder, "node.db"))
    ledger = Ledger(store, clock=time.time)
    per_slice = max(batch, total // slices // batch * batch)
    rows: list[dict[str, float]] = []
    booked = 0
    for _ in range(slices):
        todo = receipts(provider, requester, per_slice, booked)
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(0, per_slice, batch):
            ledger.record_many(todo[i:i + batch], role="provided")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        booked += per_slice
        rows.append({"receipts": booked, "wall_us": wall / per_slice * 1e6,
                     "cpu_us": cpu / per_slice * 1e6})
        print(f"[ledger] {booked:7,} receipts: {rows[-1]['wall_us']:6.1f} us wall, "
              f"{rows[-1]['cpu_us']:6.1f} us CPU per receipt", file=sys.stderr)
    assert ledger.totals()["unbalanced_transactions"] == 0
    store.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receipts", type=int, default=100_000,
                        help="receipts to book in all (default 100,000)")
    parser.add_argument("--batch", type=int, default=24,
                        help="receipts per transaction, as in one group commit (default 24)")
    parser.add_argument("--slices", type=int, default=10,
                        help="report this many slices of the run (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.receipts < 1 or args.batch < 1 or args.slices < 1:
        parser.error("--receipts, --batch and --slices must be at least 1")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="knarr-bench-ledger-") as folder:
        rows = run(args.receipts, args.batch, args.slices, folder)
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(), "batch": args.batch,
            "load_before": load_before, "load_after": os.getloadavg(),
            "command": " ".join(["benchmarks/ledger.py", *sys.argv[1:]])}
    if args.json:
        print(json.dumps({"meta": meta, "slices": rows}, indent=2))
        return 0
    print(f"Booking receipts in batches of {args.batch}, Python {meta['python']}, load "
          f"average {load_before[0]:.2f} before / {meta['load_after'][0]:.2f} after")
    print(f"{'books (receipts)':>16}  {'wall us/receipt':>15}  {'CPU us/receipt':>14}")
    for row in rows:
        print(f"{row['receipts']:>16,.0f}  {row['wall_us']:>15.1f}  {row['cpu_us']:>14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
