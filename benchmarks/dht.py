"""Knarr's DHT against the ``kademlia`` package (2.2.3) on loopback.

For each network size, and for each implementation, all nodes run in one process on one
asyncio loop and talk UDP over 127.0.0.1. Measured: join time (every node joins through
node 0, one after the other), publish time, lookup latency p50/p95, hops and queries per
lookup, success rate, memory per node, and the lookups again after 30 % of the nodes
were stopped without warning.

Each (implementation, size) case runs in a child process of this script, so that the
RSS baseline for the memory figure is clean and no sockets or tasks leak between cases.

    .venv/bin/python benchmarks/dht.py [--sizes 20,100,300] [--lookups 200] [--seed 1] [--json]
    .venv/bin/python benchmarks/dht.py --render results.json   # the table of a --json run
    .venv/bin/python benchmarks/dht.py --only knarr --sizes 100 --profile /tmp/prof

Needs the ``bench`` extra (``pip install -e '.[bench]'``). Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import importlib.util
import json
import logging
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psutil

HOST = "127.0.0.1"
CHURN_SHARE = 0.30
LOOKUP_DEADLINE_S = 60.0
CASE_DEADLINE_S = 3600.0
IMPLEMENTATIONS = ("knarr", "kademlia")


def skill_sheet(i: int) -> dict[str, Any]:
    return {
        "name": f"skill-{i}",
        "description": "bench",
        "tags": ["bench"],
        "input_schema": {"text": "string"},
        "output_schema": {"text": "string"},
    }


def reference_value(i: int) -> str:
    """The ~300-byte value stored in kademlia under ``skill-{i}``."""
    head = f"skill-{i}|bench|"
    return head + "x" * (300 - len(head))


@dataclass
class Probe:
    """One lookup's outcome."""

    ok: bool
    hops: int | None
    queries: int | None
    seconds: float = 0.0
    cpu_seconds: float = 0.0


class Swarm(Protocol):
    """One implementation's nodes, driven by index."""

    value_size: int

    async def start(self, n: int) -> None: ...
    async def join(self, i: int) -> None: ...
    async def publish(self, i: int) -> None: ...
    async def lookup(self, requester: int, owner: int) -> Probe: ...
    async def kill(self, i: int) -> None: ...
    async def close(self) -> None: ...


# ---------------------------------------------------------------------------------- knarr


class KnarrSwarm:
    """``knarr.node.node.Node`` instances; hops come from the ``LookupResult`` that
    ``find_skills`` obtained (captured by wrapping each node's ``dht.lookup``)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.nodes: list[Any] = []
        self.alive: set[int] = set()
        self.value_size = 0
        self._last: dict[int, Any] = {}

    async def start(self, n: int) -> None:
        from knarr.node.identity import Identity
        from knarr.node.node import Node

        for i in range(n):
            node = Node(HOST, 0, identity=Identity.from_seed(self.rng.randbytes(32)))
            await node.start()
            self._capture_lookups(i, node)
            self.nodes.append(node)
            self.alive.add(i)

    def _capture_lookups(self, i: int, node: Any) -> None:
        lookup = node.dht.lookup

        async def traced(*args: Any, **kwargs: Any) -> Any:
            result = await lookup(*args, **kwargs)
            if kwargs.get("want_value"):  # find_skills; not the node's own upkeep lookups
                self._last[i] = result
            return result

        node.dht.lookup = traced

    async def join(self, i: int) -> None:
        await self.nodes[i].join([f"{HOST}:{self.nodes[0].port}"])

    async def publish(self, i: int) -> None:
        record = await self.nodes[i].announce(skill_sheet(i))
        self.value_size = len(record.raw)

    async def lookup(self, requester: int, owner: int) -> Probe:
        self._last.pop(requester, None)
        records = await self.nodes[requester].find_skills(f"skill-{owner}")
        result = self._last.get(requester)
        expected = self.nodes[owner].identity.node_id
        ok = len(records) == 1 and records[0].provider_id == expected
        return Probe(ok, result.hops if result else None, result.queries if result else None)

    async def kill(self, i: int) -> None:
        self.alive.discard(i)
        await self.nodes[i].stop()

    async def close(self) -> None:
        for i in sorted(self.alive):
            await self.nodes[i].stop()
        self.alive.clear()


# ------------------------------------------------------------------------------- kademlia


def counting_crawl() -> type[Any]:
    """kademlia's ``ValueSpiderCrawl`` counting its rounds and FIND_VALUE RPCs (imported
    here, so that ``--only knarr`` runs without the ``bench`` extra)."""
    from kademlia.crawling import ValueSpiderCrawl

    class CountingCrawl(ValueSpiderCrawl):  # type: ignore[misc]
        rounds = 0
        rpcs = 0

        async def find(self) -> Any:
            self.rounds += 1
            return await self._find(self.find_value)

        async def find_value(self, peer: Any, node: Any) -> Any:
            self.rpcs += 1
            return await self.protocol.call_find_value(peer, node)

    return CountingCrawl


class KademliaSwarm:
    """``kademlia.network.Server`` instances. Lookups run the same crawl as
    ``Server.get`` but always over the network (see ``lookup``); hops are the crawl's
    rounds up to the one that returned the value, queries its FIND_VALUE RPCs."""

    def __init__(self, rng: random.Random) -> None:
        from kademlia.node import Node as KNode
        from kademlia.utils import digest

        self.rng = rng
        self.servers: list[Any] = []
        self.ports: list[int] = []
        self.alive: set[int] = set()
        self.value_size = 300
        self.local_hits = 0
        self._crawl = counting_crawl()
        self._node = KNode
        self._digest = digest

    async def start(self, n: int) -> None:
        from kademlia.network import Server

        random.seed(self.rng.random())  # Server draws its node id from the global `random`
        for i in range(n):
            server = Server()
            await server.listen(0, interface=HOST)
            self.servers.append(server)
            self.ports.append(int(server.transport.get_extra_info("sockname")[1]))
            self.alive.add(i)

    async def join(self, i: int) -> None:
        await self.servers[i].bootstrap([(HOST, self.ports[0])])

    async def publish(self, i: int) -> None:
        await self.servers[i].set(f"skill-{i}", reference_value(i))

    async def lookup(self, requester: int, owner: int) -> Probe:
        """``Server.get`` answers from its own storage when it holds the key: at 20
        nodes with k=20 every node holds every key, so ``get`` would measure a dict
        lookup. To compare network lookups, run get()'s crawl unconditionally, and count
        how often the shortcut would have applied (``local_hits``)."""
        server = self.servers[requester]
        dkey = self._digest(f"skill-{owner}")
        if server.storage.get(dkey) is not None:
            self.local_hits += 1
        target = self._node(dkey)
        nearest = server.protocol.router.find_neighbors(target)
        if not nearest:
            return Probe(False, None, 0)
        crawl = self._crawl(server.protocol, target, nearest, server.ksize, server.alpha)
        value = await crawl.find()
        ok = value == reference_value(owner)
        return Probe(ok, crawl.rounds if ok else None, crawl.rpcs)

    async def kill(self, i: int) -> None:
        self.alive.discard(i)
        self.servers[i].stop()

    async def close(self) -> None:
        for i in sorted(self.alive):
            self.servers[i].stop()
        self.alive.clear()


# ---------------------------------------------------------------------------- one case


@dataclass
class LookupStats:
    lookups: int
    success: float
    p50_ms: float
    p95_ms: float
    mean_ms: float
    cpu_p50_ms: float | None
    hops_mean: float | None
    queries_mean: float | None
    concurrency: int = 1


@dataclass
class CaseResult:
    impl: str
    nodes: int
    join_total_s: float
    join_mean_ms: float
    publish_total_s: float
    published: int
    value_bytes: int
    rss_per_node_kib: float
    steady: LookupStats
    churn: LookupStats
    stopped: int
    extra: dict[str, Any] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(probes: list[Probe], concurrency: int = 1) -> LookupStats:
    if not probes:
        return LookupStats(
            0, math.nan, math.nan, math.nan, math.nan, None, None, None, concurrency
        )
    ms = [p.seconds * 1000 for p in probes]
    hops = [p.hops for p in probes if p.hops is not None]
    queries = [p.queries for p in probes if p.queries is not None]
    return LookupStats(
        lookups=len(probes),
        success=sum(p.ok for p in probes) / len(probes),
        p50_ms=percentile(ms, 50),
        p95_ms=percentile(ms, 95),
        mean_ms=sum(ms) / len(ms),
        # CPU time of the whole process, all nodes included: the work one lookup costs,
        # unaffected by other load on the machine. Meaningless for concurrent lookups.
        cpu_p50_ms=percentile([p.cpu_seconds * 1000 for p in probes], 50)
        if concurrency == 1 else None,
        hops_mean=sum(hops) / len(hops) if hops else None,
        queries_mean=sum(queries) / len(queries) if queries else None,
        concurrency=concurrency,
    )


async def timed_lookup(swarm: Swarm, requester: int, owner: int) -> Probe:
    cpu = time.process_time()
    start = time.perf_counter()
    try:
        async with asyncio.timeout(LOOKUP_DEADLINE_S):
            probe = await swarm.lookup(requester, owner)
    except TimeoutError:
        probe = Probe(False, None, None)
    probe.seconds = time.perf_counter() - start
    probe.cpu_seconds = time.process_time() - cpu
    return probe


async def run_lookups(
    swarm: Swarm, pairs: list[tuple[int, int]], concurrency: int, budget_s: float
) -> list[Probe]:
    """Run the lookups in batches of ``concurrency``; start no batch after ``budget_s``."""
    probes: list[Probe] = []
    stop = time.perf_counter() + budget_s
    for at in range(0, len(pairs), concurrency):
        if time.perf_counter() > stop:
            break
        batch = pairs[at : at + concurrency]
        probes += await asyncio.gather(*(timed_lookup(swarm, r, o) for r, o in batch))
    return probes


def lookup_pairs(
    rng: random.Random, requesters: list[int], owners: list[int], count: int
) -> list[tuple[int, int]]:
    """(requester, owner) pairs: a value stored by one node, fetched by another."""
    pairs = []
    for _ in range(count):
        requester = rng.choice(requesters)
        others = [o for o in owners if o != requester]
        if others:
            pairs.append((requester, rng.choice(others)))
    return pairs


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


async def profiled(
    profile: cProfile.Profile | None, work: Callable[[], Awaitable[list[Probe]]]
) -> list[Probe]:
    if profile is None:
        return await work()
    profile.enable()
    try:
        return await work()
    finally:
        profile.disable()


async def run_case(impl: str, n: int, args: argparse.Namespace) -> CaseResult:
    # Same seed, same lookup pairs and same stopped nodes for both implementations.
    rng = random.Random(f"{args.seed}/{n}")
    swarm: Swarm = KnarrSwarm(rng) if impl == "knarr" else KademliaSwarm(rng)
    churn_lookups = args.lookups if impl == "knarr" else min(args.lookups, args.ref_churn_lookups)
    churn_concurrency = 1 if impl == "knarr" else args.ref_churn_concurrency
    profile = cProfile.Profile() if args.profile and impl == "knarr" else None

    def progress(message: str) -> None:
        print(f"[{impl} n={n}] {message}", file=sys.stderr, flush=True)

    budget = args.phase_budget
    load = os.getloadavg()[0]
    baseline = rss()
    try:
        await swarm.start(n)
        joins = []
        started = time.perf_counter()
        for i in range(1, n):
            t = time.perf_counter()
            await swarm.join(i)
            joins.append(time.perf_counter() - t)
        join_total = time.perf_counter() - started
        progress(f"joined in {join_total:.2f} s")

        started = time.perf_counter()
        published = 0
        while published < n and time.perf_counter() - started < budget:
            await swarm.publish(published)
            published += 1
        publish_total = time.perf_counter() - started
        progress(f"published {published}/{n} in {publish_total:.2f} s")
        per_node_kib = (rss() - baseline) / n / 1024

        owners = list(range(published))
        pairs = lookup_pairs(rng, list(range(n)), owners, args.lookups)
        steady = await profiled(profile, lambda: run_lookups(swarm, pairs, 1, budget))
        steady_hits = getattr(swarm, "local_hits", 0)
        progress(f"{len(steady)} lookups done")

        stopped = sorted(rng.sample(range(n), round(CHURN_SHARE * n)))
        for i in stopped:
            await swarm.kill(i)
        survivors = sorted(set(range(n)) - set(stopped))
        pairs = lookup_pairs(rng, survivors, owners, args.lookups)[:churn_lookups]
        churn = await run_lookups(swarm, pairs, churn_concurrency, budget)
        progress(f"{len(churn)} lookups after stopping {len(stopped)} nodes done")
    finally:
        await swarm.close()

    extra: dict[str, Any] = {"load_average_1m": load}
    if isinstance(swarm, KademliaSwarm):
        extra["local_hits"] = steady_hits
        extra["local_hits_churn"] = swarm.local_hits - steady_hits
    if profile is not None:
        path = Path(args.profile) / f"{impl}-{n}.prof"
        path.parent.mkdir(parents=True, exist_ok=True)
        profile.dump_stats(path)
        extra["profile"] = str(path)
    return CaseResult(
        impl=impl,
        nodes=n,
        join_total_s=join_total,
        join_mean_ms=sum(joins) / len(joins) * 1000,
        publish_total_s=publish_total,
        published=published,
        value_bytes=swarm.value_size,
        rss_per_node_kib=per_node_kib,
        steady=summarize(steady),
        churn=summarize(churn, churn_concurrency),
        stopped=len(stopped),
        extra=extra,
    )


# ------------------------------------------------------------------------------ report


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0 or math.isnan(ours / theirs):
        return "-"
    return f"{ours / theirs:.3g}"


def table(results: dict[tuple[str, int], CaseResult], args: argparse.Namespace) -> str:
    rows: list[tuple[str, str, str, str, str]] = []
    for n in args.sizes:
        ours, theirs = results[("knarr", n)], results[("kademlia", n)]

        def row(
            label: str, get: Callable[[CaseResult], float | None], digits: int = 1,
            with_ratio: bool = False, pair: tuple[CaseResult, CaseResult] = (ours, theirs),
        ) -> None:
            a, b = get(pair[0]), get(pair[1])
            rows.append((
                str(pair[0].nodes), label, fmt(a, digits), fmt(b, digits),
                ratio(a, b) if with_ratio else "",
            ))

        row("join total (s)", lambda r: r.join_total_s, 2, True)
        row("join per node (ms)", lambda r: r.join_mean_ms, 1, True)
        row("publish total (s)", lambda r: r.publish_total_s, 2, True)
        if ours.published < n or theirs.published < n:
            row("published within budget", lambda r: r.published, 0)
        row("lookups", lambda r: r.steady.lookups, 0)
        row("lookup p50 (ms)", lambda r: r.steady.p50_ms, 2, True)
        row("lookup p95 (ms)", lambda r: r.steady.p95_ms, 2, True)
        row("lookup CPU p50 (ms)", lambda r: r.steady.cpu_p50_ms, 2, True)
        row("hops (mean)", lambda r: r.steady.hops_mean, 2)
        row("queries per lookup (mean)", lambda r: r.steady.queries_mean, 1)
        row("success (%)", lambda r: r.steady.success * 100, 1)
        row("RSS per node (KiB)", lambda r: r.rss_per_node_kib, 0)
        label = f"{round(CHURN_SHARE * 100)} % stopped"
        rows.append((str(n), f"{label}: lookups", str(ours.churn.lookups),
                     f"{theirs.churn.lookups} ({theirs.churn.concurrency} at a time)", ""))
        row(f"{label}: p50 (ms)", lambda r: r.churn.p50_ms, 2, True)
        row(f"{label}: p95 (ms)", lambda r: r.churn.p95_ms, 2, True)
        row(f"{label}: success (%)", lambda r: r.churn.success * 100, 1)
    header = ("nodes", "metric", "knarr", "kademlia 2.2.3", "knarr/kademlia")
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(5)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    previous = None
    for r in rows:
        if previous is not None and r[0] != previous:
            lines.append("")
        previous = r[0]
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def notes(results: dict[tuple[str, int], CaseResult], args: argparse.Namespace) -> str:
    hits = ", ".join(
        f"n={n}: {results[('kademlia', n)].extra.get('local_hits', 0)}"
        f"/{results[('kademlia', n)].steady.lookups}"
        for n in args.sizes
    )
    size = results[("knarr", args.sizes[0])].value_bytes
    return "\n".join([
        f"Values: knarr signed skill record ({size} bytes), kademlia 300-byte string.",
        "Join: nodes 1..n-1 join one after another through node 0.",
        "Memory: psutil RSS after join and publish minus RSS before the first node, / n.",
        "Hops: knarr LookupResult.hops; kademlia crawl rounds until the value arrived.",
        "Lookup CPU: process CPU time during one lookup (all nodes share the process), so",
        "  it is the work a lookup costs whatever else runs on the machine.",
        "kademlia lookups run Server.get's crawl even when the requester holds the key;",
        f"  Server.get would have answered locally in {hits} steady-state lookups.",
        f"Churn: {round(CHURN_SHARE * 100)} % of nodes stopped abruptly, lookups from "
        "survivors; kademlia waits 5 s for each dead peer, so its churn phase is bounded "
        f"to {args.ref_churn_lookups} lookups, {args.ref_churn_concurrency} at a time.",
        f"Budget: a phase stops publishing or starting lookups after {args.phase_budget:.0f} s.",
        "Load average (1 min) at the start of each case: " + ", ".join(
            f"{impl} n={n}: {r.extra['load_average_1m']:.1f}" for (impl, n), r in results.items()
        ),
    ])


# -------------------------------------------------------------------------------- main


def quiet_logs() -> None:
    for name in ("kademlia", "rpcudp", "knarr", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def knarr_revision() -> str:
    """Which knarr this run imports: its commit and, if knarr/node/ (all that this
    benchmark runs) differs from the commit or is not in git, a digest of its sources, so
    that two runs of uncommitted code can be told apart."""
    spec = importlib.util.find_spec("knarr")
    assert spec is not None and spec.origin is not None, "knarr is not importable"
    package = Path(spec.origin).parent
    digest = hashlib.sha256()
    for path in sorted((package / "node").rglob("*.py")):
        digest.update(path.read_bytes())
    sources = digest.hexdigest()[:10]
    try:
        head = subprocess.run(
            ["git", "-C", str(package.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(package.parent), "status", "--porcelain", "--", "knarr/node/*.py"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{package} (not in git), sources {sources}"
    return f"{head}+dirty, sources {sources}" if dirty else head


def case_from_dict(data: dict[str, Any]) -> CaseResult:
    data = dict(data)
    data["steady"] = LookupStats(**data["steady"])
    data["churn"] = LookupStats(**data["churn"])
    return CaseResult(**data)


def print_table(
    results: dict[tuple[str, int], CaseResult], meta: dict[str, Any], args: argparse.Namespace
) -> None:
    print(f"DHT on loopback, {meta['machine']}, Python {meta['python']}, seed {meta['seed']}, "
          f"{args.lookups} lookups per phase, {meta['date']}, "
          f"knarr at {meta['knarr_revision']}\n")
    print(table(results, args))
    print()
    print(notes(results, args))
    if "warning" in meta:
        print(f"\nWARNING: {meta['warning']}")


def run_child(impl: str, n: int, args: argparse.Namespace) -> CaseResult:
    command = [
        sys.executable, __file__, "--case", f"{impl}:{n}", "--seed", str(args.seed),
        "--lookups", str(args.lookups), "--ref-churn-lookups", str(args.ref_churn_lookups),
        "--ref-churn-concurrency", str(args.ref_churn_concurrency),
        "--phase-budget", str(args.phase_budget),
    ]
    if args.profile:
        command += ["--profile", args.profile]
    done = subprocess.run(
        command, stdout=subprocess.PIPE, text=True, timeout=CASE_DEADLINE_S, check=True
    )
    return case_from_dict(json.loads(done.stdout))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20,100,300",
                        type=lambda s: [int(x) for x in s.split(",")],
                        help="network sizes, comma-separated (default 20,100,300)")
    parser.add_argument("--lookups", type=int, default=200, help="lookups per phase")
    parser.add_argument("--ref-churn-lookups", type=int, default=50,
                        help="bound on kademlia's lookups after churn (default 50)")
    parser.add_argument("--ref-churn-concurrency", type=int, default=10,
                        help="kademlia churn lookups run this many at a time (default 10)")
    parser.add_argument("--phase-budget", type=float, default=300.0, metavar="S",
                        help="stop publishing, or starting lookups, after S seconds per phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--profile", metavar="DIR",
                        help="cProfile knarr's steady-state lookups into DIR/knarr-<n>.prof")
    parser.add_argument("--only", choices=IMPLEMENTATIONS, help="run one implementation")
    parser.add_argument("--render", metavar="FILE",
                        help="print the table of an earlier --json run instead of running")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # impl:n, run in this process
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    if args.case:
        impl, n = args.case.split(":")
        result = asyncio.run(run_case(impl, int(n), args))
        json.dump(asdict(result), sys.stdout)
        return 0

    if args.render:
        saved = json.loads(Path(args.render).read_text())
        results = {(c["impl"], c["nodes"]): case_from_dict(c) for c in saved["cases"]}
        args.sizes = sorted({n for _, n in results})
        for key in ("lookups", "ref_churn_lookups", "ref_churn_concurrency", "phase_budget"):
            setattr(args, key, saved["meta"].get(key, getattr(args, key)))
        print_table(results, saved["meta"], args)
        return 0

    impls = (args.only,) if args.only else IMPLEMENTATIONS
    revision = knarr_revision()
    results = {(impl, n): run_child(impl, n, args) for n in args.sizes for impl in impls}
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {platform.system()}",
        "command": " ".join(["benchmarks/dht.py", *sys.argv[1:]]),
        "seed": args.seed,
        "knarr_revision": revision,
        "lookups": args.lookups,
        "ref_churn_lookups": args.ref_churn_lookups,
        "ref_churn_concurrency": args.ref_churn_concurrency,
        "phase_budget": args.phase_budget,
    }
    if knarr_revision() != revision:
        meta["warning"] = "knarr/node/ changed during the run: cases measured different code"
        print(f"warning: {meta['warning']}", file=sys.stderr)
    if args.json:
        json.dump({"meta": meta, "cases": [asdict(r) for r in results.values()]}, sys.stdout,
                  indent=2)
        print()
    elif args.only:
        for r in results.values():
            print(json.dumps(asdict(r), indent=2))
    else:
        print_table(results, meta, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
