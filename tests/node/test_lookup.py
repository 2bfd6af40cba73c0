"""The iterative lookup state machine, driven synchronously over a simulated network of
routing tables, and the adaptive RPC timeouts."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Set

import pytest

from knarr.node.contact import Contact, distance
from knarr.node.lookup import Lookup, RttEstimator
from knarr.node.routing import RoutingTable

N = 500
K = 20
ALPHA = 3


class Network:
    """N nodes, each with a routing table holding (up to k per bucket) all the others."""

    def __init__(self, n: int, seed: int) -> None:
        rng = random.Random(seed)
        self.ids = [rng.randbytes(32) for _ in range(n)]
        # Loopback, so the per-subnet limit does not thin the tables.
        self.contacts = {i: Contact(i, "127.0.0.1", 10_000 + n) for n, i in enumerate(self.ids)}
        self.tables: dict[bytes, RoutingTable] = {}
        for node_id in self.ids:
            table = RoutingTable(node_id, k=K)
            others = [c for c in self.contacts.values() if c.node_id != node_id]
            rng.shuffle(others)
            for contact in others:
                table.add(contact, 0.0)
            self.tables[node_id] = table

    def true_closest(self, target: bytes, among: Iterable[bytes]) -> list[bytes]:
        return sorted(among, key=lambda i: distance(i, target))[:K]


Answer = Callable[[Lookup, Contact], list[Contact]]


def drive(lookup: Lookup, answer: Answer, *, stop_when_finished: bool = False) -> None:
    """Answer queries in the order they were issued until none are outstanding."""
    inflight = deque(lookup.start())
    while inflight:
        assert len(inflight) == lookup.pending <= lookup.alpha
        if stop_when_finished and lookup.finished:
            return
        inflight.extend(answer(lookup, inflight.popleft()))
    assert lookup.pending == 0
    assert lookup.finished


@pytest.fixture(scope="module")
def network() -> Network:
    return Network(N, seed=20240601)


def lookup_from(net: Network, start: bytes, target: bytes, **kw: object) -> Lookup:
    seeds = net.tables[start].closest(target)
    return Lookup(start, target, seeds, k=K, alpha=ALPHA, **kw)  # type: ignore[arg-type]


def honest(
    net: Network,
    target: bytes,
    dead: Set[bytes] = frozenset(),
    *,
    learned: set[bytes] | None = None,
    holders: Set[bytes] = frozenset(),
) -> Answer:
    """Live nodes answer with their closest contacts (noted in ``learned``); ``holders``
    answer with the value instead; dead nodes never answer."""

    def answer(lookup: Lookup, contact: Contact) -> list[Contact]:
        if contact.node_id in dead:
            return lookup.on_failure(contact.node_id)
        if contact.node_id in holders:
            return lookup.on_reply(contact.node_id, [], has_value=True)
        nodes = net.tables[contact.node_id].closest(target)
        if learned is not None:
            learned.update(c.node_id for c in nodes)
        return lookup.on_reply(contact.node_id, nodes)

    return answer


# ------------------------------------------------------------------------ convergence


def test_lookups_find_the_true_k_closest(network: Network) -> None:
    rng = random.Random(1)
    for _ in range(40):
        start, target = rng.choice(network.ids), rng.randbytes(32)
        lookup = lookup_from(network, start, target)
        drive(lookup, honest(network, target))
        others = [i for i in network.ids if i != start]
        assert [c.node_id for c in lookup.closest()] == network.true_closest(target, others)
        assert 1 <= lookup.hops <= 8
        assert lookup.queries < 100  # a lookup, not a crawl of the network


def test_a_lookup_for_an_existing_node_finds_it_first(network: Network) -> None:
    start, wanted = network.ids[0], network.ids[1]
    lookup = lookup_from(network, start, wanted)
    drive(lookup, honest(network, wanted))
    assert lookup.closest(1)[0].node_id == wanted


def test_lookups_route_around_dead_nodes_still_listed_in_tables(network: Network) -> None:
    """30% of nodes are dead but every table still lists them, so replies carry dead
    contacts that crowd out live ones: the lookup can only use the live nodes it hears of."""
    rng = random.Random(2)
    overlap = 0
    for _ in range(25):
        start, target = rng.choice(network.ids), rng.randbytes(32)
        dead = set(rng.sample([i for i in network.ids if i != start], k=int(N * 0.3)))
        learned = {c.node_id for c in network.tables[start].closest(target)}
        lookup = lookup_from(network, start, target)
        drive(lookup, honest(network, target, dead, learned=learned))
        live = [i for i in network.ids if i not in dead and i != start]
        found = [c.node_id for c in lookup.closest()]
        truth = network.true_closest(target, live)
        # Exactly the k closest live nodes it learned of: none skipped, no dead one kept.
        assert found == network.true_closest(target, learned.intersection(live))
        assert truth[0] in found
        overlap += len(set(found) & set(truth))
    assert overlap / 25 >= 17  # measured 18.5 of 20 on average over 200 lookups


@pytest.fixture(scope="module")
def dead_noticed(network: Network) -> tuple[Network, set[bytes]]:
    """The same nodes, 30% dead, and every live node has noticed: its table dropped the
    dead contacts and promoted replacements (which may be dead too, until noticed)."""
    net = Network(N, seed=20240601)
    assert net.ids == network.ids
    dead = set(random.Random(5).sample(net.ids, k=int(N * 0.3)))
    for node_id in net.ids:
        if node_id in dead:
            continue
        table = net.tables[node_id]
        while stale := [e.contact.node_id for e in table.contacts() if e.contact.node_id in dead]:
            for d in stale:
                table.failed(d, max_failures=1)
    return net, dead


def test_lookups_find_the_true_k_closest_live_nodes_once_the_dead_are_noticed(
    network: Network, dead_noticed: tuple[Network, set[bytes]]
) -> None:
    net, dead = dead_noticed
    live_ids = [i for i in net.ids if i not in dead]
    rng = random.Random(6)
    for _ in range(40):
        start, target = rng.choice(live_ids), rng.randbytes(32)
        # The starting node has not noticed yet: its seeds still include dead nodes.
        seeds = network.tables[start].closest(target)
        assert dead & {c.node_id for c in seeds}
        lookup = Lookup(start, target, seeds, k=K, alpha=ALPHA)
        drive(lookup, honest(net, target, dead))
        live = [i for i in live_ids if i != start]
        assert [c.node_id for c in lookup.closest()] == net.true_closest(target, live)


def test_a_lookup_never_queries_its_own_node(network: Network) -> None:
    start = network.ids[3]
    target = bytes(a ^ b for a, b in zip(start, b"\x00" * 31 + b"\x01", strict=True))
    queried: list[bytes] = []

    def answer(lookup: Lookup, contact: Contact) -> list[Contact]:
        queried.append(contact.node_id)
        return honest(network, target)(lookup, contact)

    drive(lookup_from(network, start, target), answer)
    assert start not in queried
    assert len(queried) == len(set(queried))  # and nobody twice


def test_a_lookup_without_seeds_finishes_empty() -> None:
    lookup = Lookup(b"\x00" * 32, b"\x01" * 32, [])
    assert lookup.start() == []
    assert lookup.finished and lookup.closest() == [] and lookup.hops == 0


# -------------------------------------------------------------------------- stalling


def test_a_stall_frees_an_alpha_slot(network: Network) -> None:
    start, target = network.ids[10], random.Random(101).randbytes(32)
    lookup = lookup_from(network, start, target)
    first = lookup.start()
    assert len(first) == ALPHA == lookup.pending
    more = lookup.on_stall(first[0].node_id)
    assert len(more) == 1 and more[0] not in first
    assert lookup.pending == ALPHA
    # Stalling it again, or failing it afterwards, frees nothing more.
    assert lookup.on_stall(first[0].node_id) == []
    assert lookup.on_failure(first[0].node_id) == []
    assert lookup.pending == ALPHA


def test_a_stalled_contact_does_not_block_the_end(network: Network) -> None:
    start, target = network.ids[11], random.Random(102).randbytes(32)
    nearest = network.true_closest(target, [i for i in network.ids if i != start])[0]
    seeds = [network.contacts[nearest], *network.tables[start].closest(target)]
    lookup = Lookup(start, target, seeds, k=K, alpha=ALPHA)
    inflight = deque(lookup.start())
    assert inflight[0].node_id == nearest
    inflight.popleft()
    inflight.extend(lookup.on_stall(nearest))  # ...and it never answers
    answer = honest(network, target)
    while inflight:
        inflight.extend(answer(lookup, inflight.popleft()))
    assert lookup.finished and lookup.pending == 0
    found = [c.node_id for c in lookup.closest()]
    assert nearest not in found
    others = [i for i in network.ids if i not in (start, nearest)]
    assert found == network.true_closest(target, others)


def test_a_late_reply_from_a_stalled_contact_still_counts(network: Network) -> None:
    start, target = network.ids[12], random.Random(103).randbytes(32)
    nearest = network.true_closest(target, [i for i in network.ids if i != start])[0]
    seeds = [network.contacts[nearest], *network.tables[start].closest(target)]
    lookup = Lookup(start, target, seeds, k=K, alpha=ALPHA)
    inflight = deque(lookup.start())
    inflight.popleft()
    inflight.extend(lookup.on_stall(nearest))
    answer = honest(network, target)
    inflight.extend(answer(lookup, inflight.popleft()))  # someone else answers first
    assert not lookup.finished
    late = lookup.on_reply(nearest, network.tables[nearest].closest(target))
    assert lookup.pending == len(inflight) + len(late)
    inflight.extend(late)
    while inflight:
        inflight.extend(answer(lookup, inflight.popleft()))
    assert lookup.finished and lookup.pending == 0
    assert lookup.closest(1)[0].node_id == nearest
    others = [i for i in network.ids if i != start]
    assert [c.node_id for c in lookup.closest()] == network.true_closest(target, others)


def test_a_patient_lookup_waits_for_a_slow_node_among_the_closest() -> None:
    own, target = b"\x00" * 32, b"\xff" * 32
    contacts = [Contact(bytes([i]) * 32, "127.0.0.1", 7000 + i) for i in range(1, 6)]
    for patient in (False, True):
        lookup = Lookup(own, target, contacts, k=3, alpha=2, patient=patient)
        first = lookup.start()
        assert [c.node_id[0] for c in first] == [5, 4]
        assert [c.node_id[0] for c in lookup.on_stall(first[0].node_id)] == [3]
        for c in (first[1], contacts[2]):
            lookup.on_reply(c.node_id, [])
        lookup.on_reply(contacts[1].node_id, [])
        # The three nearest that answered are 4, 3, 2; node 5 is slow, not dead.
        assert lookup.finished is not patient
        if patient:
            lookup.on_reply(first[0].node_id, [])
            assert lookup.finished
            assert [c.node_id[0] for c in lookup.closest()] == [5, 4, 3]


def test_a_failure_frees_its_slot_and_is_excluded() -> None:
    own, target = b"\x00" * 32, b"\xff" * 32
    contacts = [Contact(bytes([i]) * 32, "127.0.0.1", 7000 + i) for i in range(1, 6)]
    lookup = Lookup(own, target, contacts, k=3, alpha=2)
    first = lookup.start()
    assert [c.node_id[0] for c in first] == [5, 4]  # nearest to 0xff.. first
    assert [c.node_id[0] for c in lookup.on_failure(first[0].node_id)] == [3]
    assert lookup.pending == 2
    lookup.on_reply(first[1].node_id, [])
    lookup.on_reply(contacts[2].node_id, [])
    assert [c.node_id[0] for c in lookup.on_reply(contacts[1].node_id, [])] == []
    assert lookup.finished
    assert [c.node_id[0] for c in lookup.closest()] == [4, 3, 2]


def test_replies_from_unknown_or_repeated_contacts_change_nothing() -> None:
    own, target = b"\x00" * 32, b"\xff" * 32
    a = Contact(b"\x0a" * 32, "127.0.0.1", 7001)
    lookup = Lookup(own, target, [a], k=3, alpha=1)
    assert lookup.start() == [a]
    assert lookup.on_reply(b"\x0b" * 32, [Contact(b"\x0c" * 32, "127.0.0.1", 1)]) == []
    assert lookup.on_reply(a.node_id, []) == []
    assert lookup.on_reply(a.node_id, []) == []
    assert lookup.pending == 0 and lookup.closest() == [a]


def test_closest_with_a_count_of_zero_is_empty() -> None:
    a = Contact(b"\x0a" * 32, "127.0.0.1", 7001)
    lookup = Lookup(b"\x00" * 32, b"\xff" * 32, [a])
    lookup.start()
    lookup.on_reply(a.node_id, [])
    assert lookup.closest() == [a]
    assert lookup.closest(0) == []


# ---------------------------------------------------------------------------- values


def test_a_value_lookup_stops_at_the_quorum(network: Network) -> None:
    rng = random.Random(3)
    for _ in range(10):
        start, key = rng.choice(network.ids), rng.randbytes(32)
        holders = set(network.true_closest(key, network.ids)) - {start}
        lookup = lookup_from(network, start, key, want_value=True, value_quorum=3)
        drive(lookup, honest(network, key, holders=holders), stop_when_finished=True)
        assert lookup.finished
        assert len(lookup.values_from) == 3
        assert {c.node_id for c in lookup.values_from} <= holders
        assert len(lookup.value_hops) == 3 and lookup.hops == min(lookup.value_hops)
        # Once finished, it asks nobody else.
        assert lookup.on_reply(b"\x00" * 32, []) == []


def test_a_value_lookup_without_a_quorum_ends_like_a_node_lookup(network: Network) -> None:
    start, key = network.ids[20], random.Random(104).randbytes(32)
    others = [i for i in network.ids if i != start]
    holders = set(network.true_closest(key, others)[:2])
    answer_nodes = honest(network, key)

    def answer(lookup: Lookup, contact: Contact) -> list[Contact]:
        nodes = network.tables[contact.node_id].closest(key)
        if contact.node_id in holders:
            return lookup.on_reply(contact.node_id, nodes, has_value=True)
        return answer_nodes(lookup, contact)

    lookup = lookup_from(network, start, key, want_value=True, value_quorum=3)
    drive(lookup, answer)
    assert {c.node_id for c in lookup.values_from} == holders
    assert [c.node_id for c in lookup.closest()] == network.true_closest(key, others)


def test_hops_count_the_path_to_the_answer() -> None:
    own, target = b"\x00" * 32, b"\xff" * 32
    a, b, c = (Contact(bytes([x]) * 32, "127.0.0.1", 7000 + x) for x in (0x10, 0x80, 0xF0))
    lookup = Lookup(own, target, [a], want_value=True, value_quorum=1)
    assert lookup.start() == [a]
    assert lookup.hops == 0
    assert lookup.on_reply(a.node_id, [b]) == [b]
    assert lookup.hops == 1
    assert lookup.on_reply(b.node_id, [c, a]) == [c]
    assert lookup.hops == 2
    assert lookup.on_reply(c.node_id, [], has_value=True) == []
    assert lookup.finished and lookup.hops == 3
    assert lookup.values_from == [c]


# ---------------------------------------------------------------------- RTT estimates


def test_an_estimator_without_samples_uses_the_initial_guess() -> None:
    rtt = RttEstimator(initial=0.5, max_timeout=3.0)
    assert rtt.timeout("anyone") == pytest.approx(0.5 + 4 * 0.25)
    assert rtt.min_stall < rtt.stall("anyone") <= rtt.timeout("anyone")


def test_timeouts_clamp_to_the_bounds() -> None:
    rtt = RttEstimator(min_timeout=0.1, max_timeout=3.0, min_stall=0.02)
    for _ in range(50):
        rtt.observe("fast", 0.0001)
        rtt.observe("slow", 30.0)
    assert rtt.timeout("fast") == 0.1
    assert rtt.stall("fast") == 0.02
    assert rtt.timeout("slow") == 3.0
    assert rtt.stall("slow") == 0.75 * 3.0  # always before the timeout


def test_estimates_converge_towards_the_samples() -> None:
    rtt = RttEstimator(min_timeout=0.01, max_timeout=10.0, min_stall=0.001)
    rtt.observe("p", 1.0)
    assert rtt.timeout("p") == pytest.approx(1.0 + 4 * 0.5)
    for _ in range(100):
        rtt.observe("p", 0.2)
    # With no variance left: give up at 2 x srtt, stop waiting at 1.5 x srtt.
    assert rtt.timeout("p") == pytest.approx(0.4, abs=1e-3)
    assert rtt.stall("p") == pytest.approx(0.3, abs=1e-3)


def test_unknown_peers_use_the_estimate_over_all_peers() -> None:
    rtt = RttEstimator(min_timeout=0.001, max_timeout=10.0, min_stall=0.0001)
    for _ in range(100):
        rtt.observe("a", 0.01)
    assert rtt.timeout("stranger") == pytest.approx(rtt.timeout("a"))
    for _ in range(100):
        rtt.observe("b", 0.5)
    assert rtt.timeout("a") < rtt.timeout("stranger")
    assert rtt.timeout("stranger") == pytest.approx(rtt.timeout("b"), abs=1e-3)
    # A forgotten peer falls back to the global estimate too.
    rtt.forget("a")
    assert rtt.timeout("a") == rtt.timeout("stranger")


def test_the_estimator_remembers_a_bounded_number_of_peers() -> None:
    rtt = RttEstimator(capacity=4, min_timeout=0.001, max_timeout=10.0)
    rtt.observe("first", 5.0)
    for i in range(10):
        rtt.observe(i, 0.01)
    assert len(rtt._peers) == 4
    assert rtt.timeout("first") == rtt.timeout("never-seen")


@pytest.mark.parametrize("rtt_s", [0.1, 0.3])
def test_on_a_steady_link_a_query_stalls_before_it_times_out(rtt_s: float) -> None:
    rtt = RttEstimator()
    for i in range(200):
        rtt.observe("p", rtt_s + (0.01 if i % 2 else -0.01))
    assert rtt.stall("p") < rtt.timeout("p")
