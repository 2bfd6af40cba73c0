"""Simulate a Knarr DHT of many real nodes in virtual time (see docs/simulation.md).

    .venv/bin/python benchmarks/dht_sim.py --nodes 10000 --dead 0.2 --churn 0.5 \\
        --loss 0.01 --duration 3600 --seed 1 [--sybil 1000] [--eclipse 32] [--poison] \\
        [--reflect] [--json]

Every node is an unmodified ``knarr.node.dht.Dht`` (signing with a same-size stand-in
for Ed25519 unless ``--real-signatures``); the network,
the clock and the attackers are simulated. The same arguments give the same output.
Progress goes to stderr; the figures to stdout (``--json``: one JSON object).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from knarr.sim import LatencyModel, SimConfig, simulate  # noqa: E402

_TABLE = (
    "nodes", "lookups", "success_rate", "hops_p50", "hops_p95", "latency_p50_ms",
    "latency_p95_ms", "messages_per_lookup", "record_availability", "bytes_per_node_per_s",
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=1000, help="honest nodes (default 1000)")
    p.add_argument("--dead", type=float, default=0.0,
                   help="share of nodes that stop for good after publishing (default 0)")
    p.add_argument("--churn", type=float, default=0.0,
                   help="share of the population replaced per simulated hour (default 0)")
    p.add_argument("--loss", type=float, default=0.0, help="datagram loss rate (default 0)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lookups", type=int, default=1000, help="measured lookups (default 1000)")
    p.add_argument("--records", type=int, default=None,
                   help="skill records published (default min(1000, nodes/2))")
    p.add_argument("--duration", type=float, default=None,
                   help="simulated seconds of churn and lookups (default 3600 with --churn, "
                   "else 60)")
    p.add_argument("--join-period", type=float, default=300.0,
                   help="seconds over which the nodes arrive (default 300)")
    p.add_argument("--latency-ms", type=float, default=LatencyModel.access_ms,
                   help="median access delay per endpoint, one way (default 20)")
    p.add_argument("--latency-sigma", type=float, default=LatencyModel.access_sigma)
    p.add_argument("--tail-prob", type=float, default=LatencyModel.tail_prob,
                   help="chance of a Pareto-distributed excess delay per datagram")
    p.add_argument("--tail-ms", type=float, default=LatencyModel.tail_ms)
    p.add_argument("--tail-alpha", type=float, default=LatencyModel.tail_alpha)
    p.add_argument("--sybil", type=int, default=0, help="Sybil ids from one /24 (e.g. 1000)")
    p.add_argument("--eclipse", type=int, default=0,
                   help="attacker ids ground close to a victim's record key (e.g. 32)")
    p.add_argument("--eclipse-bits", type=int, default=0,
                   help="shared prefix the attackers grind (default log2(nodes) + 1)")
    p.add_argument("--poison", action="store_true", help="inject forged/tampered/expired/"
                   "replayed records by STORE and in VALUE replies")
    p.add_argument("--reflect", action="store_true",
                   help="spoof a victim's address in requests; measure amplification")
    p.add_argument("--no-crowd-detection", dest="crowd_detection", action="store_false",
                   help="lookups without the eclipse defence (to measure what it buys)")
    p.add_argument("--real-signatures", action="store_true",
                   help="sign with Ed25519, not the simulator's same-size stand-in (slower; "
                   "the figures are the same)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def config_from(args: argparse.Namespace) -> SimConfig:
    duration = args.duration
    if duration is None:
        duration = 3600.0 if args.churn > 0 else 60.0
    return SimConfig(
        nodes=args.nodes,
        dead=args.dead,
        churn=args.churn,
        loss=args.loss,
        seed=args.seed,
        lookups=args.lookups,
        records=args.records,
        duration=duration,
        join_period=args.join_period,
        latency=LatencyModel(
            access_ms=args.latency_ms,
            access_sigma=args.latency_sigma,
            tail_prob=args.tail_prob,
            tail_ms=args.tail_ms,
            tail_alpha=args.tail_alpha,
        ),
        sybil=args.sybil,
        eclipse=args.eclipse,
        eclipse_bits=args.eclipse_bits,
        poison=args.poison,
        reflect=args.reflect,
        crowd_detection=args.crowd_detection,
        real_signatures=args.real_signatures,
        progress=not args.quiet,
    )


def _print_table(out: dict[str, Any]) -> None:
    width = max(len(k) for k in out)
    for key in _TABLE:
        print(f"{key:<{width}}  {out[key]}")
    for key, value in out.items():
        if key not in _TABLE:
            print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = simulate(config_from(args))
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        _print_table(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
