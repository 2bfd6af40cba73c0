"""The simulation scenario: a network is built, damaged, churned and measured.

Phases, in virtual time (see ``docs/simulation.md``):

1. **Join.** ``bootstrap`` stable nodes start the network; the other nodes arrive at
   random times over ``join_period`` seconds, each joining through three bootstrap
   addresses, and run their maintenance from then on.
2. **Publish.** ``records`` distinct nodes each publish one skill record.
3. **Dead.** A share ``dead`` of the nodes stops abruptly and never returns; they stay
   in everyone's routing tables until noticed.
4. **Churn.** For ``duration`` seconds, nodes leave abruptly and new ones join (a share
   ``churn`` of the population per hour, as a Poisson process), while the measured
   lookups are spread over the period: a random live node looks up the record of a random
   live publisher.
5. **Availability.** Every record whose publisher is still alive is looked up once.

Adversaries join or act between phases 3 and 4 (:mod:`knarr.sim.adversaries`).
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from knarr.node.dht import DhtSettings
from knarr.node.transport import Addr, DatagramNetwork
from knarr.sim.network import LatencyModel
from knarr.sim.swarm import HostPlan, Peer, Probe, Swarm

EPOCH = 1_767_225_600.0
"""Wall-clock time at virtual time 0 (2026-01-01 00:00 UTC)."""


@dataclass
class SimConfig:
    """Everything that determines a run; the same config and seed give the same output."""

    nodes: int = 1000
    dead: float = 0.0
    churn: float = 0.0
    loss: float = 0.0
    seed: int = 1
    lookups: int = 1000
    records: int | None = None  # default: min(1000, nodes // 2)
    duration: float = 0.0
    join_period: float = 300.0
    settle: float = 120.0
    publish_period: float = 60.0
    availability_pause: float = 1.0
    bootstrap: int = 8
    latency: LatencyModel = field(default_factory=LatencyModel)
    sybil: int = 0
    eclipse: int = 0
    eclipse_bits: int = 0  # 0: enough to beat every honest node (log2(nodes) + 4)
    poison: bool = False
    reflect: bool = False
    crowd_detection: bool = True  # False: lookups without the eclipse defence (a "before")
    real_signatures: bool = False  # True: Ed25519, not the simulator's stand-in (slower)
    progress: bool = False

    @property
    def record_count(self) -> int:
        if self.records is not None:
            return self.records
        return max(1, min(1000, self.nodes // 2))


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0-100); 0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Attack(Protocol):
    """An adversary: it acts after the dead phase and measures itself at the end."""

    async def setup(self, scenario: Scenario) -> None: ...

    async def measure(self, scenario: Scenario) -> dict[str, Any]: ...


class Progress:
    """Progress lines on stderr: phase, virtual and wall time."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            loop_time = asyncio.get_running_loop().time()
            wall = time.perf_counter() - self.started
            print(f"[{wall:7.1f}s wall | t={loop_time:8.1f}s] {message}", file=sys.stderr)


class Scenario:
    """Runs the phases on a :class:`Swarm`; the network decides sim or real."""

    def __init__(
        self,
        config: SimConfig,
        network: DatagramNetwork,
        *,
        clock: Callable[[], float],
        hosts: HostPlan,
        settings: Callable[[], DhtSettings] = DhtSettings,
        attacks: Iterable[Attack] = (),
    ) -> None:
        self.config = config
        self.attacks = list(attacks)
        self.rng = random.Random(config.seed)
        self.network = network
        self.swarm = Swarm(
            network,
            rng=random.Random(self.rng.getrandbits(64)),
            clock=clock,
            hosts=hosts,
            settings=settings,
        )
        self.progress = Progress(config.progress)
        self.bootstrap: list[Peer] = []
        self.probes: list[Probe] = []
        self.availability: list[bool] = []
        self.publishers: list[tuple[Peer, str]] = []
        self.results: dict[str, Any] = {}
        self._background: list[asyncio.Task[Any]] = []
        self._window: tuple[float, dict[Peer, int]] | None = None

    # ------------------------------------------------------------------ helpers

    def _spawn_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.append(task)
        return task

    def _bootstrap_addrs(self) -> list[Addr]:
        live = [p.addr for p in self.bootstrap if p.alive]
        return self.rng.sample(live, min(3, len(live)))

    async def _arrive(self, role: str = "honest") -> Peer | None:
        peer = await self.swarm.spawn(role)
        if await self.swarm.join(peer, self._bootstrap_addrs()):
            self.swarm.start_maintenance(peer)
            return peer
        return None

    async def _at(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        delay = when - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------ phases

    async def run(self) -> dict[str, Any]:
        cfg = self.config
        await self.join_phase()
        await self.publish_phase()
        self.dead_phase()
        await self.attack_phase()
        self._open_window()
        await self.churn_phase()
        await self.availability_phase()
        self._close_window()
        await self.report_attacks()
        await self.swarm.shutdown()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        hops = [p.hops for p in self.probes if p.ok]
        lat = [p.seconds * 1000 for p in self.probes if p.ok]
        out: dict[str, Any] = {
            "nodes": cfg.nodes,
            "dead": cfg.dead,
            "churn": cfg.churn,
            "loss": cfg.loss,
            "seed": cfg.seed,
            "lookups": len(self.probes),
            "success_rate": _ratio(sum(p.ok for p in self.probes), len(self.probes)),
            "hops_p50": percentile(hops, 50),
            "hops_p95": percentile(hops, 95),
            "latency_p50_ms": round(percentile(lat, 50), 1),
            "latency_p95_ms": round(percentile(lat, 95), 1),
            "messages_per_lookup": round(
                sum(p.messages for p in self.probes) / max(1, len(self.probes)), 2
            ),
            "records": len(self.availability),
            "record_availability": _ratio(sum(self.availability), len(self.availability)),
        }
        out.update(self.results)
        return out

    async def join_phase(self) -> None:
        cfg = self.config
        swarm = self.swarm
        first = await swarm.spawn("honest")
        self.bootstrap.append(first)
        swarm.start_maintenance(first)
        for _ in range(min(cfg.bootstrap, cfg.nodes) - 1):
            peer = await swarm.spawn("honest")
            await swarm.join(peer, [b.addr for b in self.bootstrap])
            swarm.start_maintenance(peer)
            self.bootstrap.append(peer)
        loop = asyncio.get_running_loop()
        start = loop.time()
        rest = cfg.nodes - len(self.bootstrap)
        arrivals = sorted(self.rng.uniform(0, cfg.join_period) for _ in range(rest))
        joins: list[asyncio.Task[Any]] = []
        step = max(1, rest // 10)
        for i, at in enumerate(arrivals):
            await self._at(start + at)
            joins.append(asyncio.ensure_future(self._arrive()))
            if (i + 1) % step == 0:
                self.progress(f"join: {i + 1}/{rest} arrived")
        await asyncio.gather(*joins)
        await self._at(start + cfg.join_period + cfg.settle)
        self.progress(f"join: {len(swarm.live())} nodes in the network")

    async def publish_phase(self) -> None:
        cfg = self.config
        candidates = [p for p in self.swarm.live() if p not in self.bootstrap]
        chosen = self.rng.sample(candidates, min(cfg.record_count, len(candidates)))
        loop = asyncio.get_running_loop()
        start = loop.time()
        jobs = []
        for i, peer in enumerate(chosen):
            name = f"skill-{i}"
            self.publishers.append((peer, name))
            await self._at(start + i * cfg.publish_period / max(1, len(chosen)))
            jobs.append(asyncio.ensure_future(self.swarm.publish(peer, name)))
        await asyncio.gather(*jobs)
        await self._at(start + cfg.publish_period)
        self.progress(f"publish: {len(chosen)} records published")

    def dead_phase(self) -> None:
        cfg = self.config
        candidates = [p for p in self.swarm.live() if p not in self.bootstrap]
        count = min(len(candidates), round(cfg.dead * cfg.nodes))
        for peer in self.rng.sample(candidates, count):
            self.swarm.kill(peer)
        self.progress(f"dead: {count} nodes stopped without warning")

    async def attack_phase(self) -> None:
        """Adversaries join or act (see :mod:`knarr.sim.adversaries`)."""
        for attack in self.attacks:
            await attack.setup(self)
            self.progress(f"attack: {type(attack).__name__} set up")

    async def report_attacks(self) -> None:
        for attack in self.attacks:
            self.results.update(await attack.measure(self))
            self.progress(f"attack: {type(attack).__name__} measured")

    async def churn_phase(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + cfg.duration
        churn = self._spawn_task(self._churn(start, end)) if cfg.churn > 0 else None
        times = sorted(self.rng.uniform(0, cfg.duration) for _ in range(cfg.lookups))
        jobs = []
        step = max(1, cfg.lookups // 10)
        for i, at in enumerate(times):
            await self._at(start + at)
            job = self._measure_one()
            if job is not None:
                jobs.append(asyncio.ensure_future(job))
            if (i + 1) % step == 0:
                self.progress(f"lookups: {i + 1}/{cfg.lookups} started")
        await self._at(end)
        if churn is not None:
            churn.cancel()
        self.probes = [p for p in await asyncio.gather(*jobs) if p is not None]

    def _measure_one(self) -> Any:
        live = [(p, n) for p, n in self.publishers if p.alive]
        askers = self.swarm.live()
        if not live or not askers:
            return None
        provider, name = self.rng.choice(live)
        asker = self.rng.choice(askers)
        return self.swarm.find(asker, name, provider.node_id)

    async def _churn(self, start: float, end: float) -> None:
        """Leaves and joins as a Poisson process: ``churn`` x population per hour."""
        cfg = self.config
        rate = cfg.churn * max(1, len(self.swarm.live())) / 3600.0
        loop = asyncio.get_running_loop()
        left = joined = 0
        while True:
            await asyncio.sleep(self.rng.expovariate(rate))
            if loop.time() >= end:
                return
            candidates = [p for p in self.swarm.live() if p not in self.bootstrap]
            if candidates:
                self.swarm.kill(self.rng.choice(candidates))
                left += 1
            self._spawn_task(self._arrive())
            joined += 1
            if joined % max(1, round(rate * 300)) == 0:
                self.progress(f"churn: {left} left, {joined} joined")

    async def availability_phase(self) -> None:
        live = [(p, n) for p, n in self.publishers if p.alive]
        askers = self.swarm.live()
        checks: list[asyncio.Future[Probe]] = []
        for i, (provider, name) in enumerate(live):
            asker = self.rng.choice(askers)
            checks.append(asyncio.ensure_future(self.swarm.find(asker, name, provider.node_id)))
            if i % 50 == 49:
                await asyncio.sleep(self.config.availability_pause)
        probes = await asyncio.gather(*checks)
        self.availability = [p.ok for p in probes]
        self.progress(f"availability: {sum(self.availability)}/{len(probes)} records found")

    # ------------------------------------------------------------------ traffic window

    def _open_window(self) -> None:
        loop = asyncio.get_running_loop()
        counts = {p: _bytes(p) for p in self.swarm.peers if p.alive and p.role == "honest"}
        self._window = (loop.time(), counts)

    def _close_window(self) -> None:
        assert self._window is not None
        loop = asyncio.get_running_loop()
        start, before = self._window
        end = loop.time()
        total_bytes = 0
        node_seconds = 0.0
        for peer in self.swarm.peers:
            if peer.role != "honest":
                continue
            born = max(peer.born, start)
            died = min(peer.died if peer.died is not None else end, end)
            if died <= born:
                continue
            node_seconds += died - born
            total_bytes += _bytes(peer) - before.get(peer, 0)
        self.results["bytes_per_node_per_s"] = round(total_bytes / max(node_seconds, 1e-9), 1)


def _bytes(peer: Peer) -> int:
    stats = peer.dht.stats
    return stats.bytes_sent + stats.bytes_received


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 5) if whole else 0.0
