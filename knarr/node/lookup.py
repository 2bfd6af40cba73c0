"""The iterative Kademlia lookup as a pure state machine, and adaptive RPC timeouts.

The driver (asyncio in the node, or a virtual-time loop in the simulator) sends a query
to each contact the machine returns and reports back with :meth:`Lookup.on_reply`,
:meth:`Lookup.on_stall` or :meth:`Lookup.on_failure`. A *stalled* query (slower than its
peer usually is) no longer holds one of the α slots and no longer holds up the end of the
lookup, so one dead or slow peer costs a soft timeout, not a full one; its reply still
counts if it arrives before the lookup ends.
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

from knarr.node.contact import Contact


class State(Enum):
    NEW = 0
    INFLIGHT = 1
    STALLED = 2
    RESPONDED = 3
    FAILED = 4


@dataclass(slots=True)
class _Candidate:
    contact: Contact
    distance: int
    hop: int
    state: State = State.NEW


def _distance(c: _Candidate) -> int:
    return c.distance


CROWD_EPSILON = 1e-4


@lru_cache(maxsize=16)
def crowd_bounds(ranks: int, epsilon: float = CROWD_EPSILON) -> tuple[float, ...]:
    """For each rank i = 1..``ranks``: the expected number of nodes λ below which finding
    i nodes is less likely than ``epsilon`` (the Poisson tail P(X >= i) for mean λ).

    Node ids are uniform, so the number of nodes within distance d of any target is
    Poisson with mean d / spacing (spacing = 2**256 / network size). If the i-th closest
    candidate lies within ``bound[i] * spacing``, the nodes up to it are a *crowd*: ids
    ground next to the target, as an eclipse or a record poisoner places them."""

    def tail(lam: float, i: int) -> float:
        term = total = math.exp(-lam)
        for j in range(1, i):
            term *= lam / j
            total += term
        return 1.0 - total

    out: list[float] = []
    for i in range(1, ranks + 1):
        low, high = 0.0, float(i)
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (mid, high) if tail(mid, i) < epsilon else (low, mid)
        out.append(low)
    return tuple(out)


class Lookup:
    """Find the k nodes closest to ``target`` (and, with ``want_value``, stored values).

    A ``patient`` lookup does not end while a stalled query to a node nearer than the
    k-th that answered is still outstanding: a store needs the k closest live nodes, and
    a node slow to answer (a busy peer, a long path) is usually alive.
    """

    def __init__(
        self,
        own_id: bytes,
        target: bytes,
        seeds: Iterable[Contact],
        *,
        k: int = 20,
        alpha: int = 3,
        want_value: bool = False,
        value_quorum: int = 3,
        spacing: int = 0,
        patient: bool = False,
    ) -> None:
        self.target = target
        self.patient = patient
        self.k = k
        self.alpha = alpha
        self.want_value = want_value
        self.value_quorum = value_quorum
        self._t = int.from_bytes(target, "big")
        self._own_id = own_id
        self._candidates: dict[bytes, _Candidate] = {}
        self._order: list[_Candidate] = []  # every candidate, nearest first
        self._inflight = 0
        self.values_from: list[Contact] = []
        self.value_hops: list[int] = []
        self._valued: list[_Candidate] = []
        self.queries = 0
        self._bounds = (
            [int(b * spacing) for b in crowd_bounds(2 * k)] if spacing > 0 else []
        )
        self._crowd: int | None = 0 if not self._bounds else None
        self._finished: bool | None = None  # known until the next event
        for contact in seeds:
            self._offer(contact, 0)

    def _offer(self, contact: Contact, hop: int) -> None:
        node_id = contact.node_id
        if node_id == self._own_id or node_id in self._candidates:
            return
        candidate = _Candidate(contact, int.from_bytes(node_id, "big") ^ self._t, hop)
        self._candidates[node_id] = candidate
        insort(self._order, candidate, key=_distance)
        if self._bounds:
            self._crowd = None

    @property
    def crowd(self) -> int:
        """How many of the nearest candidates (failed ones aside) are a crowd: far
        closer to the target than a network of this size allows (see
        :func:`crowd_bounds`). A crowd is queried, but does not count towards the k
        closest, so the lookup goes on past it to the honest
        nodes around the target. 0 when there is none (the normal case)."""
        if self._crowd is None:
            end = rank = 0
            bounds = self._bounds
            for c in self._order:
                if c.state is State.FAILED:
                    continue
                if rank >= len(bounds) or c.distance >= bounds[-1]:
                    break
                if c.distance < bounds[rank]:
                    end = rank + 1
                rank += 1
            self._crowd = end
        return self._crowd

    def _shortlist(self) -> list[_Candidate]:
        """The crowd (if any), then the k nearest other candidates that have neither
        failed nor stalled."""
        out: list[_Candidate] = []
        k = self.k
        crowd = self.crowd
        rank = outside = 0
        for c in self._order:
            if c.state is State.FAILED:
                continue
            rank += 1
            if c.state is State.STALLED:
                continue
            out.append(c)
            if rank > crowd:
                outside += 1
                if outside >= k:
                    break
        return out

    def _edge(self) -> int:
        """The distance up to which candidates are in the crowd (-1: no crowd)."""
        crowd = self.crowd
        if not crowd:
            return -1
        rank = 0
        for c in self._order:
            if c.state is not State.FAILED:
                rank += 1
                if rank == crowd:
                    return c.distance
        return -1

    @property
    def finished(self) -> bool:
        if self._finished is None:
            self._finished = self._finished_with(self._shortlist())
        return self._finished

    def _finished_with(self, shortlist: list[_Candidate]) -> bool:
        if self.want_value and len(self._valued) >= self.value_quorum:
            return True
        if not shortlist:
            # Everyone left is slow: wait for their replies or timeouts, not for nothing.
            return not any(c.state is State.STALLED for c in self._order)
        if not all(c.state is State.RESPONDED for c in shortlist):
            return False
        if self.patient:
            # A slow node nearer than the k-th that answered would be one of the k
            # closest if it is alive: wait for its reply or its timeout.
            edge = shortlist[-1].distance
            for c in self._order:
                if c.distance >= edge:
                    break
                if c.state is State.STALLED:
                    return False
        return True

    def _next(self) -> list[Contact]:
        """The contacts to query now. Every event ends here, so this is also where
        ``finished`` is worked out (once per event: it is asked after each)."""
        shortlist = self._shortlist()
        self._finished = self._finished_with(shortlist)
        if self._finished:
            return []
        out: list[Contact] = []
        # Once values are coming in, ask only as many more as the quorum still needs.
        wanted = self.alpha
        if self.want_value and self.values_from:
            wanted = min(wanted, self.value_quorum - len(self.values_from))
        for c in shortlist:
            if self._inflight >= wanted:
                break
            if c.state is State.NEW:
                c.state = State.INFLIGHT
                self._inflight += 1
                self.queries += 1
                out.append(c.contact)
        return out

    def start(self) -> list[Contact]:
        """The first contacts to query."""
        return self._next()

    def _settle(self, node_id: bytes, new_state: State) -> _Candidate | None:
        c = self._candidates.get(node_id)
        if c is None or c.state in (State.RESPONDED, State.FAILED):
            return None
        if c.state is State.INFLIGHT:
            self._inflight -= 1
        c.state = new_state
        return c

    def on_reply(
        self, node_id: bytes, nodes: Iterable[Contact], *, has_value: bool = False
    ) -> list[Contact]:
        """A queried contact answered with ``nodes`` (and maybe values)."""
        self._finished = None
        c = self._settle(node_id, State.RESPONDED)
        if c is None:
            return self._next()
        if has_value:
            self.values_from.append(c.contact)
            self.value_hops.append(c.hop + 1)
            self._valued.append(c)
        for contact in nodes:
            self._offer(contact, c.hop + 1)
        return self._next()

    def on_stall(self, node_id: bytes) -> list[Contact]:
        """A query is slower than expected: stop waiting on it, query someone else."""
        self._finished = None
        c = self._candidates.get(node_id)
        if c is not None and c.state is State.INFLIGHT:
            self._inflight -= 1
            c.state = State.STALLED
        return self._next()

    def on_failure(self, node_id: bytes) -> list[Contact]:
        """A query timed out or was refused."""
        self._finished = None
        if self._settle(node_id, State.FAILED) is not None and self._bounds:
            self._crowd = None
        return self._next()

    @property
    def pending(self) -> int:
        """Queries still in flight (stalled ones excluded)."""
        return self._inflight

    def closest(self, count: int | None = None) -> list[Contact]:
        """The nearest contacts that answered, nearest first: the crowd (if any) and
        ``count`` (default k) more."""
        edge = self._edge()
        done = [c.contact for c in self._order if c.state is State.RESPONDED]
        crowd = sum(1 for c in self._order if c.state is State.RESPONDED and c.distance <= edge)
        return done[: crowd + (self.k if count is None else count)]

    @property
    def hops(self) -> int:
        """Hops to the value (if found) or to the nearest contact that answered."""
        if self.value_hops:
            return min(self.value_hops)
        done = [c for c in self._candidates.values() if c.state is State.RESPONDED]
        return min(done, key=lambda c: c.distance).hop + 1 if done else 0


class RttEstimator:
    """Per-peer round-trip estimates (RFC 6298 style) giving adaptive timeouts.

    ``timeout`` is when a request is given up (retransmission timeout); ``stall`` is when
    a lookup stops waiting for it and asks another peer. Unknown peers use the estimate
    over all peers, so a new peer on a fast network is not waited on for seconds.
    """

    def __init__(
        self,
        *,
        initial: float = 0.5,
        min_timeout: float = 0.1,
        max_timeout: float = 3.0,
        min_stall: float = 0.02,
        capacity: int = 4096,
    ) -> None:
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.min_stall = min_stall
        self.capacity = capacity
        self._peers: dict[Hashable, tuple[float, float]] = {}
        self._backoff: dict[Hashable, int] = {}
        self._all: tuple[float, float] = (initial, initial / 2)
        self._seeded = False

    @staticmethod
    def _update(est: tuple[float, float], sample: float) -> tuple[float, float]:
        srtt, rttvar = est
        rttvar = 0.75 * rttvar + 0.25 * abs(srtt - sample)
        return 0.875 * srtt + 0.125 * sample, rttvar

    def observe(self, peer: Hashable, sample: float) -> None:
        """Record one measured round trip, in seconds."""
        self._backoff.pop(peer, None)
        est = self._peers.get(peer)
        self._peers[peer] = self._update(est, sample) if est else (sample, sample / 2)
        if self._seeded:
            self._all = self._update(self._all, sample)
        else:
            self._all, self._seeded = (sample, sample / 2), True
        if len(self._peers) > self.capacity:
            self._peers.pop(next(iter(self._peers)))

    def backoff(self, peer: Hashable) -> None:
        """A request timed out: double its timeout until a reply brings a real sample
        (RFC 6298 5.5 backs off the timer, not the estimates). The stall is left alone,
        so a peer that has gone away costs a lookup a soft timeout, not seconds."""
        self._backoff[peer] = min(64, 2 * self._backoff.get(peer, 1))
        if len(self._backoff) > self.capacity:
            self._backoff.pop(next(iter(self._backoff)))

    def forget(self, peer: Hashable) -> None:
        self._peers.pop(peer, None)
        self._backoff.pop(peer, None)

    def _est(self, peer: Hashable) -> tuple[float, float]:
        return self._peers.get(peer, self._all)

    def srtt(self, peer: Hashable) -> float:
        """The smoothed round-trip estimate for ``peer``, in seconds."""
        return self._est(peer)[0]

    def timeout(self, peer: Hashable) -> float:
        """Give up: well past the usual round trip even when it has been steady."""
        return min(self.max_timeout, self._base_timeout(peer) * self._backoff.get(peer, 1))

    def _base_timeout(self, peer: Hashable) -> float:
        srtt, rttvar = self._est(peer)
        return min(self.max_timeout, max(self.min_timeout, 2 * srtt, srtt + 4 * rttvar))

    def stall(self, peer: Hashable) -> float:
        """Stop waiting: later than most replies, earlier than :meth:`timeout`."""
        srtt, rttvar = self._est(peer)
        return min(0.75 * self._base_timeout(peer), max(self.min_stall, 1.5 * srtt + 2 * rttvar))
