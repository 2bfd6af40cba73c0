"""``knarr info`` and ``knarr demand``: read a node's database, running or stopped."""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from knarr.errors import StorageError
from knarr.node.economy import to_credits
from knarr.node.identity import node_id_of
from knarr.node.ledger import Ledger
from knarr.node.store import Store


def add_parsers(sub: Any) -> None:
    info = sub.add_parser(
        "info", help="show node identity, ledger and reputation",
        description="Show a node's identity, ledger summary and (with --reputation) the "
        "reputation of the providers it has called. Works on a running node's database.",
    )
    info.add_argument("--storage", default="node.db", help="SQLite database (default: node.db)")
    info.add_argument("--reputation", action="store_true", help="include provider reputation")
    info.add_argument("--json", action="store_true", help="print raw JSON")
    info.set_defaults(run=run_info, log_level="WARNING")

    demand = sub.add_parser(
        "demand", help="show unmet skill demand",
        description="Skills and tags that were asked for but that no provider served, most "
        "asked first. Counted by the node that was asked and by the node that asked.",
    )
    demand.add_argument("--storage", default="node.db", help="SQLite database (default: node.db)")
    demand.add_argument("--json", action="store_true", help="print raw JSON")
    demand.set_defaults(run=run_demand, log_level="WARNING")


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _signed(micro: int) -> str:
    return f"{to_credits(micro):+g}"


def info_data(store: Store, *, reputation: bool) -> dict[str, Any]:
    ledger = Ledger(store, clock=lambda: 0.0)
    seed = store.get_meta("signing_key")
    if seed is None:
        raise StorageError(f"{store.path}: the database holds no node identity")
    from knarr.node.identity import Identity

    identity = Identity.from_seed(seed)
    totals = ledger.totals()
    peers = store.execute("SELECT COUNT(*) FROM peers")[0][0]
    announced = [str(r[0]) for r in store.execute("SELECT name FROM announced ORDER BY name")]
    data: dict[str, Any] = {
        "node_id": identity.node_id_hex,
        "public_key": identity.public_key.hex(),
        "database": store.path,
        "schema_version": store.schema_version,
        "peers_remembered": peers,
        "announced_skills": announced,
        "ledger": {
            "earned": to_credits(-totals.get("provided", 0)),
            "spent": to_credits(totals.get("consumed", 0)),
            "settled": to_credits(totals.get("settled", 0)),
            "outstanding": to_credits(totals.get("outstanding", 0)),
            "unbalanced_transactions": totals["unbalanced_transactions"],
            "balances": [
                {"peer": b.peer, "balance": to_credits(b.amount), "tasks": b.tasks}
                for b in ledger.balances()
            ],
        },
    }
    if reputation:
        stats = sorted(ledger.reputation().values(), key=lambda s: -s.score)
        data["reputation"] = [
            {"provider": s.provider, "score": round(s.score, 4), "calls": s.calls,
             "successes": s.successes, "failures": s.failures, "timeouts": s.timeouts,
             "mean_latency_ms": round(s.mean_latency_ms, 2)}
            for s in stats
        ]
    assert node_id_of(identity.public_key) == identity.node_id
    return data


async def run_info(args: argparse.Namespace) -> int:
    store = Store(args.storage, readonly=True)
    try:
        data = info_data(store, reputation=args.reputation)
    finally:
        store.close()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    led = data["ledger"]
    print(f"Node ID:     {data['node_id']}")
    print(f"Public key:  {data['public_key']}")
    print(f"Database:    {data['database']} (schema {data['schema_version']})")
    print(f"Peers:       {data['peers_remembered']} remembered")
    print(f"Skills:      {', '.join(data['announced_skills']) or 'none announced'}")
    print(f"Ledger:      earned {led['earned']:g}, spent {led['spent']:g}, "
          f"settled {led['settled']:+g}, outstanding {led['outstanding']:+g} credits")
    if led["balances"]:
        print()
        rows = [("PEER", "BALANCE", "TASKS")] + [
            (b["peer"][:16] + "...", f"{b['balance']:+g}", str(b["tasks"]))
            for b in led["balances"]
        ]
        _table(rows)
        print("(positive: the peer owes this node; negative: this node owes the peer)")
    if args.reputation:
        print()
        if not data["reputation"]:
            print("Reputation:  no providers called yet")
        else:
            rows = [("PROVIDER", "SCORE", "CALLS", "OK", "FAILED", "TIMEOUTS", "MEAN MS")] + [
                (r["provider"][:16] + "...", f"{r['score']:.3f}", str(r["calls"]),
                 str(r["successes"]), str(r["failures"]), str(r["timeouts"]),
                 f"{r['mean_latency_ms']:.1f}")
                for r in data["reputation"]
            ]
            _table(rows)
    return 0


async def run_demand(args: argparse.Namespace) -> int:
    store = Store(args.storage, readonly=True)
    try:
        rows = Ledger(store, clock=lambda: 0.0).demand()
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No unmet demand recorded.")
        return 0
    _table([("KIND", "NAME", "COUNT", "FIRST SEEN", "LAST SEEN")] + [
        (r["kind"], r["name"], str(r["count"]), _when(r["first_seen"]), _when(r["last_seen"]))
        for r in rows
    ])
    return 0
