"""Attackers for the simulator, each with the outcome it measures.

* :class:`SybilFlood` — many ids from one /24 join at once; their share of honest tables.
* :class:`Eclipse` — ids ground close to a victim's record key, answering lookups with
  only each other and swallowing STOREs; the share of lookups for the victim's record
  that still succeed.
* :class:`Poisoning` — forged, tampered, expired and replayed records, sent by STORE and
  in VALUE replies by attackers next to the key; how many are accepted.
* :class:`Reflection` — requests with a victim's address as their forged source; bytes
  that reach the victim per byte the attacker sent.

Attackers are :class:`~knarr.node.dht.Dht` subclasses that override how they answer;
the honest nodes they attack run unmodified code.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from typing import Any

import nacl.bindings

from knarr.node import wire
from knarr.node.contact import Contact, distance
from knarr.node.dht import Dht
from knarr.node.identity import Identity
from knarr.node.records import SkillRecord, sign_record, skill_key
from knarr.node.transport import Addr
from knarr.node.wire import (
    Envelope,
    FindNode,
    FindValue,
    Nodes,
    Ping,
    Request,
    Store,
    Stored,
    Value,
)
from knarr.sim.network import SimNetwork
from knarr.sim.scenario import Attack, Scenario, SimConfig, percentile
from knarr.sim.swarm import Peer, skill_sheet


def attacks_for(config: SimConfig) -> list[Attack]:
    """The attacks a config asks for, in a fixed order."""
    out: list[Attack] = []
    if config.sybil:
        out.append(SybilFlood(config.sybil))
    if config.eclipse:
        out.append(Eclipse(config.eclipse, config.eclipse_bits))
    if config.poison:
        out.append(Poisoning())
    if config.reflect:
        out.append(Reflection())
    return out


def grind(rng: random.Random, target: bytes, bits: int, count: int) -> list[Identity]:
    """``count`` identities whose node ids share at least ``bits`` leading bits with
    ``target``: what an attacker does to place ids next to a key (2**bits tries each)."""
    want = int.from_bytes(target, "big") >> (256 - bits)
    out: list[Identity] = []
    while len(out) < count:
        seed = rng.randbytes(32)
        public, _ = nacl.bindings.crypto_sign_seed_keypair(seed)
        node_id = hashlib.sha256(public).digest()
        if int.from_bytes(node_id, "big") >> (256 - bits) == want:
            out.append(Identity.from_seed(seed))
    return out


def grind_bits(config: SimConfig) -> int:
    """Enough shared bits to be closer to a key than (almost) every honest node."""
    return config.eclipse_bits or math.ceil(math.log2(max(2, config.nodes))) + 1


def _attacker_hosts(rng: random.Random, count: int) -> list[Addr]:
    """Attackers with addresses in as many /24s as they need (a botnet or a cloud)."""
    return [(f"198.{rng.randrange(18, 20)}.{i % 256}.{1 + i // 256}", 4000) for i in range(count)]


async def _probe_lookups(
    scenario: Scenario, name: str, provider: Peer, count: int, span: float
) -> list[bool]:
    """``count`` lookups for ``name`` from random honest nodes, spread over ``span`` s."""
    rng = random.Random(scenario.rng.getrandbits(64))
    loop = asyncio.get_running_loop()
    start = loop.time()
    jobs = []
    for at in sorted(rng.uniform(0, span) for _ in range(count)):
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        askers = [p for p in scenario.swarm.live() if p is not provider]
        jobs.append(asyncio.ensure_future(
            scenario.swarm.find(rng.choice(askers), name, provider.node_id)
        ))
    return [p.ok for p in await asyncio.gather(*jobs)]


# ------------------------------------------------------------------------------ Sybil


class SybilFlood:
    """``count`` ids from one /24 join at once and behave well, to stay in tables."""

    def __init__(self, count: int, subnet: str = "203.0.113") -> None:
        self.count = count
        self.subnet = subnet
        self.ids: set[bytes] = set()

    async def setup(self, scenario: Scenario) -> None:
        swarm = scenario.swarm
        peers = []
        for i in range(self.count):
            addr = (f"{self.subnet}.{1 + i % 254}", 4000 + i // 254)
            peers.append(await swarm.spawn("sybil", addr=addr))
        self.ids = {p.node_id for p in peers}
        await asyncio.gather(*(swarm.join(p, scenario._bootstrap_addrs()) for p in peers))
        for p in peers:
            swarm.start_maintenance(p)

    async def measure(self, scenario: Scenario) -> dict[str, Any]:
        shares: list[float] = []
        per_bucket = in_table = 0
        full_share = 0.0
        sizes: list[int] = []
        for peer in scenario.swarm.live():
            total = sybil = 0
            k = peer.dht.settings.k
            for entries in peer.dht.table.buckets().values():
                here = sum(1 for e in entries if e.contact.node_id in self.ids)
                per_bucket = max(per_bucket, here)
                if len(entries) >= k:
                    full_share = max(full_share, here / len(entries))
                sybil += here
                total += len(entries)
            shares.append(sybil / total if total else 0.0)
            in_table = max(in_table, sybil)
            sizes.append(total)
        return {
            "sybil_ids": self.count,
            "sybil_share_max": round(max(shares, default=0.0), 4),
            "sybil_share_mean": round(sum(shares) / max(1, len(shares)), 4),
            "sybil_share_p99": round(percentile(shares, 99), 4),
            "sybil_max_per_bucket": per_bucket,
            "sybil_full_bucket_share_max": round(full_share, 4),
            "sybil_max_in_table": in_table,
            "honest_table_size_p1": percentile(sizes, 1),
            "honest_table_size_p50": percentile(sizes, 50),
        }


# ------------------------------------------------------------------------------ eclipse


class WithholdingDht(Dht):
    """An eclipse attacker: answers pings, but every FIND_NODE and FIND_VALUE with only
    its colluders nearest the target, and swallows STOREs (says yes, keeps nothing)."""

    def __init__(self, *args: Any, colluders: list[Contact], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.colluders = colluders

    def _on_request(self, env: Envelope, message: Request, addr: Addr, size: int) -> None:
        if isinstance(message, (FindNode, FindValue)):
            target = message.target if isinstance(message, FindNode) else message.key
            near = sorted(
                (c for c in self.colluders if c.node_id != env.sender_id),
                key=lambda c: distance(c.node_id, target),
            )[: self.settings.k]
            self._reply(Nodes(env.nonce, tuple(near)), addr, wire.MAX_DATAGRAM)
        elif isinstance(message, Store):
            self._reply(Stored(env.nonce, True), addr, wire.MAX_DATAGRAM)
        else:
            super()._on_request(env, message, addr, size)


class Eclipse:
    """``count`` attackers ground next to a victim's record key (see :func:`grind`)."""

    def __init__(self, count: int, bits: int = 0) -> None:
        self.count = count
        self.bits = bits
        self.victim: Peer | None = None
        self.name = ""
        self.probes: asyncio.Task[list[bool]] | None = None

    async def setup(self, scenario: Scenario) -> None:
        cfg = scenario.config
        rng = random.Random(scenario.rng.getrandbits(64))
        candidates = [(p, n) for p, n in scenario.publishers if p.alive]
        self.victim, self.name = rng.choice(candidates)
        bits = self.bits or grind_bits(cfg)
        ids = grind(rng, skill_key(self.name), bits, self.count)
        hosts = _attacker_hosts(rng, self.count)
        colluders = [Contact(i.node_id, h, p) for i, (h, p) in zip(ids, hosts, strict=True)]
        peers = [
            await scenario.swarm.spawn(
                "eclipse", identity=i, addr=a, factory=WithholdingDht, colluders=colluders
            )
            for i, a in zip(ids, hosts, strict=True)
        ]
        await asyncio.gather(*(scenario.swarm.join(p, scenario._bootstrap_addrs()) for p in peers))
        for p in peers:
            scenario.swarm.start_maintenance(p)
        span = max(cfg.duration, 1.0)
        self.probes = asyncio.ensure_future(
            _probe_lookups(scenario, self.name, self.victim, 200, span)
        )

    async def measure(self, scenario: Scenario) -> dict[str, Any]:
        assert self.probes is not None and self.victim is not None
        during = await self.probes
        after: list[bool] = []
        if self.victim.alive:
            after = await _probe_lookups(scenario, self.name, self.victim, 100, 10.0)
        both = during + after
        return {
            "eclipse_attackers": self.count,
            "eclipse_success": round(sum(both) / max(1, len(both)), 4),
            "eclipse_success_end": round(sum(after) / max(1, len(after)), 4),
            "eclipse_victim_alive": self.victim.alive,
        }


# ------------------------------------------------------------------------------ poison


class PoisoningDht(Dht):
    """A record poisoner: answers FIND_VALUE for its target key with bad records."""

    def __init__(self, *args: Any, poison: dict[bytes, list[bytes]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poison = poison

    def _on_request(self, env: Envelope, message: Request, addr: Addr, size: int) -> None:
        if isinstance(message, FindValue) and message.key in self.poison:
            value = Value(env.nonce, tuple(self.poison[message.key]))
            self._reply(value, addr, wire.MAX_DATAGRAM)
        else:
            super()._on_request(env, message, addr, size)


def _poison_records(scenario: Scenario, victim: Peer, name: str, old: SkillRecord,
                    attacker: Identity) -> dict[str, bytes]:
    current = victim.published[name]
    host, port = victim.addr
    fake = sign_record(attacker, {**skill_sheet(name), "description": "forged"}, host=host,
                       port=port, expires=current.expires, seq=current.seq + 1000)
    forged = fake.raw[:3] + victim.dht.identity.public_key + fake.raw[35:]
    body = bytearray(current.raw)
    body[40] ^= 0x01
    expired = sign_record(victim.dht.identity, skill_sheet(name), host=host, port=port,
                          expires=int(scenario.swarm.clock()) - 60, seq=0)
    return {"forged": forged, "tampered": bytes(body), "expired": expired.raw,
            "replayed": old.raw}


class Poisoning:
    """Five attackers next to a victim's key send bad records by STORE to the nodes that
    hold it, and answer every FIND_VALUE for it with them."""

    def __init__(self, count: int = 5) -> None:
        self.count = count
        self.stores: dict[str, int] = {}
        self.accepted: dict[str, int] = {}
        self.kinds: dict[bytes, str] = {}
        self.victim: Peer | None = None
        self.name = ""
        self.probes: asyncio.Task[list[bool]] | None = None
        self.results: list[list[SkillRecord]] = []
        self.already_held = 0
        self.held_before = 0

    async def setup(self, scenario: Scenario) -> None:
        rng = random.Random(scenario.rng.getrandbits(64))
        swarm = scenario.swarm
        candidates = [(p, n) for p, n in scenario.publishers if p.alive]
        self.victim, self.name = victim, name = rng.choice(candidates)
        old = victim.published[name]
        await victim.dht.republish(force=True)  # the old record is now a replay
        key = skill_key(name)
        ids = grind(rng, key, grind_bits(scenario.config), self.count)
        bad = _poison_records(scenario, victim, name, old, ids[0])
        self.kinds = {raw: kind for kind, raw in bad.items()}
        poison = {key: list(bad.values())}
        hosts = _attacker_hosts(rng, self.count)
        peers = [
            await swarm.spawn("poison", identity=i, addr=(h, p + 1), factory=PoisoningDht,
                              poison=poison)
            for i, (h, p) in zip(ids, hosts, strict=True)
        ]
        await asyncio.gather(*(swarm.join(p, scenario._bootstrap_addrs()) for p in peers))
        for p in peers:
            swarm.start_maintenance(p)
        honest = {p.node_id: p for p in swarm.live()}
        holders = [c for c in (await peers[0].dht.lookup(key)).closest if c.node_id in honest]
        # Nodes whose copy of the newer version was lost still hold the old one, the very
        # bytes replayed: a STORE of them changes nothing there, and is counted apart.
        stale = {
            node_id for node_id, peer in honest.items()
            if any(r.raw == old.raw for r in peer.dht.records.get(key, now_s=0))
        }
        self.held_before = len(stale)
        for kind, raw in bad.items():
            replies = await asyncio.gather(
                *(peers[0].dht.call(c.addr, Store(key, raw), expect=c.node_id) for c in holders),
                return_exceptions=True,
            )
            ok = [
                c.node_id for c, r in zip(holders, replies, strict=True)
                if isinstance(r, Envelope) and isinstance(r.message, Stored) and r.message.ok
            ]
            self.stores[kind] = len(replies)
            self.accepted[kind] = sum(1 for n in ok if kind != "replayed" or n not in stale)
            if kind == "replayed":
                self.already_held = sum(1 for n in ok if n in stale)
        self.probes = asyncio.ensure_future(self._lookups(scenario, rng))

    async def _lookups(self, scenario: Scenario, rng: random.Random) -> list[bool]:
        assert self.victim is not None
        key = skill_key(self.name)
        jobs = []
        for _ in range(100):
            await asyncio.sleep(rng.uniform(0, 0.5))
            asker = rng.choice([p for p in scenario.swarm.live() if p is not self.victim])
            jobs.append(asyncio.ensure_future(
                asker.dht.lookup(key, want_value=True, accept=lambda r: r.name == self.name)
            ))
        results = await asyncio.gather(*jobs)
        self.results = [r.records for r in results]
        return [any(r.public_key == self.victim.dht.identity.public_key for r in rs)
                for rs in self.results]

    async def measure(self, scenario: Scenario) -> dict[str, Any]:
        assert self.probes is not None and self.victim is not None
        found = await self.probes
        newest = self.victim.published[self.name].seq
        in_lookups = dict.fromkeys(self.kinds.values(), 0)
        for records in self.results:
            for r in records:
                if r.raw in self.kinds:
                    in_lookups[self.kinds[r.raw]] += 1
                elif r.public_key == self.victim.dht.identity.public_key and r.seq < newest - 1:
                    in_lookups["replayed"] += 1
        held = replayed = 0
        for peer in scenario.swarm.live():
            for record in peer.dht.records.get(skill_key(self.name), now_s=0):
                kind = self.kinds.get(record.raw)
                held += kind is not None and kind != "replayed"
                replayed += kind == "replayed"
        return {
            "poison_stores": sum(self.stores.values()),
            "poison_stores_accepted": dict(self.accepted),
            "poison_replayed_already_held": self.already_held,
            "poison_in_lookup_results": in_lookups,
            "poison_held_by_honest": held,
            "poison_replayed_held_by_honest": replayed,
            "poison_replayed_held_before": self.held_before,
            "poison_victim_found": round(sum(found) / max(1, len(found)), 4),
        }


# ------------------------------------------------------------------------------ reflection


class Reflection:
    """An attacker sends signed requests to honest nodes with the victim's address as
    their source. The victim was a DHT node, so its address is proven everywhere."""

    def __init__(self, requests: int = 3000) -> None:
        self.requests = requests
        self.sent = 0
        self.delivered = 0
        self.nodes = 0

    async def setup(self, scenario: Scenario) -> None:
        network = scenario.network
        if not isinstance(network, SimNetwork):
            return
        rng = random.Random(scenario.rng.getrandbits(64))
        swarm = scenario.swarm
        victim = rng.choice([p for p in swarm.live() if p not in scenario.bootstrap])
        addr = victim.addr
        swarm.kill(victim)  # the victim's host keeps its address and counts what arrives

        def sink(data: bytes, src: Addr) -> None:
            self.delivered += len(data)

        await network.bind(addr[0], addr[1], sink)
        attacker = Identity.from_seed(rng.randbytes(32))
        keys = [skill_key(n) for p, n in scenario.publishers if p.alive][:50]
        targets = [p for p in swarm.live()]
        self.nodes = len(targets)
        for i in range(self.requests):
            message: Request
            kind = i % 3
            if kind == 0:
                message = FindNode(rng.randbytes(32))
            elif kind == 1 and keys:
                message = FindValue(rng.choice(keys))
            else:
                message = Ping()
            now_ms = int(swarm.clock() * 1000)
            data = wire.seal(attacker, message, now_ms=now_ms, nonce=rng.randbytes(16))
            self.sent += len(data)
            network.inject(data, addr, rng.choice(targets).addr)
            if i % 100 == 99:
                await asyncio.sleep(0.1)
        await asyncio.sleep(15.0)  # replies and probes still in flight

    async def measure(self, scenario: Scenario) -> dict[str, Any]:
        return {
            "reflect_requests": self.requests,
            "reflect_bytes_sent": self.sent,
            "reflect_bytes_at_victim": self.delivered,
            "amplification": round(self.delivered / max(1, self.sent), 3),
        }


__all__ = [
    "Eclipse",
    "Poisoning",
    "PoisoningDht",
    "Reflection",
    "SybilFlood",
    "WithholdingDht",
    "attacks_for",
    "grind",
]
