"""The iterative Kademlia lookup as a pure state machine, and adaptive RPC timeouts.

The driver (asyncio in the node, or a virtual-time loop in the simulator) sends a query
to each contact the machine returns and reports back with :meth:`Lookup.on_reply`,
:meth:`Lookup.on_stall` or :meth:`Lookup.on_failure`. A *stalled* query (slower than its
peer usually is) no longer holds one of the α slots and no longer holds up the end of the
lookup, so one dead or slow peer costs a soft timeout, not a full one; its reply still
counts if it arrives before the lookup ends.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from enum import Enum

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


class Lookup:
    """Find the k nodes closest to ``target`` (and, with ``want_value``, stored values)."""

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
    ) -> None:
        self.target = target
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
        self.queries = 0
        for contact in seeds:
            self._offer(contact, 0)

    def _offer(self, contact: Contact, hop: int) -> None:
        node_id = contact.node_id
        if node_id == self._own_id or node_id in self._candidates:
            return
        candidate = _Candidate(contact, int.from_bytes(node_id, "big") ^ self._t, hop)
        self._candidates[node_id] = candidate
        insort(self._order, candidate, key=_distance)

    def _shortlist(self) -> list[_Candidate]:
        """The k nearest candidates that have neither failed nor stalled."""
        out: list[_Candidate] = []
        k = self.k
        for c in self._order:
            if c.state is not State.FAILED and c.state is not State.STALLED:
                out.append(c)
                if len(out) >= k:
                    break
        return out

    @property
    def finished(self) -> bool:
        if self.want_value and len(self.values_from) >= self.value_quorum:
            return True
        return all(c.state is State.RESPONDED for c in self._shortlist())

    def _next(self) -> list[Contact]:
        if self.finished:
            return []
        out: list[Contact] = []
        for c in self._shortlist():
            if self._inflight >= self.alpha:
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
        c = self._settle(node_id, State.RESPONDED)
        if c is None:
            return self._next()
        if has_value:
            self.values_from.append(c.contact)
            self.value_hops.append(c.hop + 1)
        for contact in nodes:
            self._offer(contact, c.hop + 1)
        return self._next()

    def on_stall(self, node_id: bytes) -> list[Contact]:
        """A query is slower than expected: stop waiting on it, query someone else."""
        c = self._candidates.get(node_id)
        if c is not None and c.state is State.INFLIGHT:
            self._inflight -= 1
            c.state = State.STALLED
        return self._next()

    def on_failure(self, node_id: bytes) -> list[Contact]:
        """A query timed out or was refused."""
        self._settle(node_id, State.FAILED)
        return self._next()

    @property
    def pending(self) -> int:
        """Queries still in flight (stalled ones excluded)."""
        return self._inflight

    def closest(self, count: int | None = None) -> list[Contact]:
        """The nearest contacts that answered, nearest first."""
        done = [c.contact for c in self._order if c.state is State.RESPONDED]
        return done[: self.k if count is None else count]

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
        self._all: tuple[float, float] = (initial, initial / 2)
        self._seeded = False

    @staticmethod
    def _update(est: tuple[float, float], sample: float) -> tuple[float, float]:
        srtt, rttvar = est
        rttvar = 0.75 * rttvar + 0.25 * abs(srtt - sample)
        return 0.875 * srtt + 0.125 * sample, rttvar

    def observe(self, peer: Hashable, sample: float) -> None:
        """Record one measured round trip, in seconds."""
        est = self._peers.get(peer)
        self._peers[peer] = self._update(est, sample) if est else (sample, sample / 2)
        if self._seeded:
            self._all = self._update(self._all, sample)
        else:
            self._all, self._seeded = (sample, sample / 2), True
        if len(self._peers) > self.capacity:
            self._peers.pop(next(iter(self._peers)))

    def backoff(self, peer: Hashable) -> None:
        """A request timed out: wait longer next time (the timeout roughly doubles)
        until a reply brings a real sample."""
        srtt, rttvar = self._est(peer)
        self._peers[peer] = (srtt, min(self.max_timeout, max(2 * rttvar, srtt / 2)))
        if len(self._peers) > self.capacity:
            self._peers.pop(next(iter(self._peers)))

    def forget(self, peer: Hashable) -> None:
        self._peers.pop(peer, None)

    def _est(self, peer: Hashable) -> tuple[float, float]:
        return self._peers.get(peer, self._all)

    def srtt(self, peer: Hashable) -> float:
        """The smoothed round-trip estimate for ``peer``, in seconds."""
        return self._est(peer)[0]

    def timeout(self, peer: Hashable) -> float:
        """Give up: well past the usual round trip even when it has been steady."""
        srtt, rttvar = self._est(peer)
        return min(self.max_timeout, max(self.min_timeout, 2 * srtt, srtt + 4 * rttvar))

    def stall(self, peer: Hashable) -> float:
        """Stop waiting: later than most replies, earlier than :meth:`timeout`."""
        srtt, rttvar = self._est(peer)
        return min(0.75 * self.timeout(peer), max(self.min_stall, 1.5 * srtt + 2 * rttvar))
