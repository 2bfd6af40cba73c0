"""The routing table: Kademlia invariants under random operation sequences, and the
bucket policies (keep long-lived contacts, replacement cache, per-subnet limit)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from knarr.node.contact import Contact, distance, subnet_of
from knarr.node.routing import AddResult, RoutingTable, bucket_index, random_id_in_bucket

OWN = bytes(32)
PROPERTY = settings(max_examples=150, derandomize=True, deadline=None, database=None)


def id_in_bucket(index: int, n: int = 0) -> bytes:
    """An id at distance ``2**index + n`` from OWN (so in bucket ``index``)."""
    assert 0 <= n < (1 << index)
    return ((1 << index) | n).to_bytes(32, "big")


def peer(node_id: bytes, host: str, port: int = 4000) -> Contact:
    return Contact(node_id, host, port)


# --------------------------------------------------------------------------- invariants

# Few /24s and /48s, and loopback, so that subnet limits and full buckets both happen.
HOSTS = [
    "10.0.0.1",
    "10.0.0.2",
    "10.0.0.3",
    "10.0.1.1",
    "10.0.1.2",
    "10.0.2.1",
    "192.168.5.5",
    "127.0.0.1",
    "127.0.0.2",
    "2001:db8:0:1::1",
    "2001:db8:0:2::2",
    "2001:db8:1::1",
]


@dataclass(frozen=True)
class Op:
    kind: str
    who: int
    host: int
    port: int
    arg: int


ops_strategy = st.lists(
    st.builds(
        Op,
        kind=st.sampled_from(["add", "add", "add", "seen", "failed", "remove"]),
        who=st.integers(0, 15),
        host=st.integers(0, len(HOSTS) - 1),
        port=st.sampled_from([4000, 4001]),
        arg=st.integers(1, 3),
    ),
    min_size=10,
    max_size=150,
)
# Random 32-byte ids, so half of them land in bucket 255, a quarter in 254, and so on.
pool_strategy = st.lists(st.binary(min_size=32, max_size=32), min_size=16, max_size=16)


def check_invariants(table: RoutingTable, target: bytes, n: int) -> None:
    buckets = table.buckets()
    entries = [e for b in buckets.values() for e in b]
    ids = [e.contact.node_id for e in entries]
    assert len(table) == len(entries) == len(set(ids)) == len(list(table.contacts()))
    assert OWN not in ids and OWN not in table
    for index, bucket in buckets.items():
        assert 0 < len(bucket) <= table.k
        for entry in bucket:
            assert bucket_index(OWN, entry.contact.node_id) == index
            assert entry.contact.node_id in table
            assert table.get(entry.contact.node_id) is entry
        subnets = Counter(subnet_of(e.contact.host) for e in bucket)
        subnets.pop(None, None)  # loopback is exempt
        assert all(count <= table.subnet_limit for count in subnets.values())
    whole = Counter(subnet_of(e.contact.host) for e in entries)
    assert table.has_loopback == (None in whole)
    whole.pop(None, None)
    for host in HOSTS:
        assert table.subnet_count(host) == whole.get(subnet_of(host), 0)
    brute = sorted((e.contact for e in entries), key=lambda c: distance(c.node_id, target))
    assert table.closest(target, n) == brute[:n]
    assert table.closest(target) == brute[: table.k]
    if brute:
        skip = brute[0].node_id
        assert table.closest(target, n, exclude=skip) == [c for c in brute if c.node_id != skip][:n]


@PROPERTY
@given(
    pool=pool_strategy,
    ops=ops_strategy,
    k=st.integers(1, 4),
    share=st.sampled_from([0.1, 0.25, 0.5]),
    target=st.binary(min_size=32, max_size=32),
    n=st.integers(1, 12),
)
def test_table_invariants_hold_under_random_operations(
    pool: list[bytes], ops: list[Op], k: int, share: float, target: bytes, n: int
) -> None:
    pool = [OWN, *pool[1:]]  # the own id is offered too, and must never get in
    table = RoutingTable(OWN, k=k, subnet_limit=2, table_subnet_share=share)
    for now, op in enumerate(ops):
        node_id = pool[op.who]
        before = table.get(node_id)
        before_addr = before.contact.addr if before else None
        size = len(table)
        if op.kind == "add":
            contact = peer(node_id, HOSTS[op.host], op.port)
            result, oldest = table.add(contact, float(now))
            event(f"add {result.name}")
            if result is AddResult.ADDED:
                assert before is None and len(table) == size + 1
                if subnet_of(contact.host) is not None:
                    # Admitted only within the subnet's share of the table (or the floor).
                    held = table.subnet_count(contact.host)
                    assert held <= max(2, share * len(table))
            elif result is AddResult.UPDATED:
                assert before_addr == contact.addr and len(table) == size
                assert list(table.buckets()[bucket_index(OWN, node_id)])[-1].contact == contact
            elif result is AddResult.PENDING:
                # The full bucket is left alone: its oldest contact is to be pinged.
                bucket = table.buckets()[bucket_index(OWN, node_id)]
                assert len(bucket) == k and len(table) == size
                assert oldest is not None and bucket[0].contact == oldest
                assert node_id not in table
            else:
                assert len(table) == size
                if before is not None:
                    assert table.get(node_id).contact.addr == before_addr  # type: ignore[union-attr]
            if result is not AddResult.PENDING:
                assert oldest is None
        elif op.kind == "seen":
            table.seen(node_id, float(now))
            assert len(table) == size
        elif op.kind == "failed":
            removed = table.failed(node_id, max_failures=op.arg)
            event(f"failed removed={removed}")
            if removed:
                assert before is not None and node_id not in table
            else:
                assert len(table) == size and (node_id in table) == (before is not None)
        else:
            table.remove(node_id)
            assert node_id not in table
        check_invariants(table, target, n)


@PROPERTY
@given(
    own=st.binary(min_size=32, max_size=32),
    index=st.integers(0, 255),
    entropy=st.binary(min_size=0, max_size=40),
)
def test_random_id_in_bucket_lands_in_that_bucket(own: bytes, index: int, entropy: bytes) -> None:
    node_id = random_id_in_bucket(own, index, entropy)
    assert len(node_id) == 32
    assert bucket_index(own, node_id) == index


def test_random_ids_in_a_wide_bucket_differ() -> None:
    ids = {random_id_in_bucket(OWN, 200, bytes([i]) * 32) for i in range(50)}
    assert len(ids) == 50


def test_bucket_index_is_the_highest_differing_bit() -> None:
    assert bucket_index(OWN, id_in_bucket(0)) == 0
    assert bucket_index(OWN, id_in_bucket(255, 12345)) == 255
    assert bucket_index(OWN, b"\x00" * 31 + b"\x03") == 1


# ------------------------------------------------------------------------ bucket policy


def test_the_own_id_is_rejected() -> None:
    table = RoutingTable(OWN)
    assert table.add(peer(OWN, "10.0.0.1"), 0.0) == (AddResult.REJECTED, None)
    assert len(table) == 0


def test_a_full_bucket_reports_its_oldest_and_keeps_it() -> None:
    table = RoutingTable(OWN, k=2)
    a, b, c, d = (peer(id_in_bucket(255, i), f"10.0.{i}.1") for i in range(4))
    assert table.add(a, 1.0) == (AddResult.ADDED, None)
    assert table.add(b, 2.0) == (AddResult.ADDED, None)
    assert table.add(c, 3.0) == (AddResult.PENDING, a)
    assert a.node_id in table and b.node_id in table and c.node_id not in table
    # a answered the ping: it becomes the newest, so b is now the one to ping.
    table.seen(a.node_id, 4.0)
    assert table.add(d, 5.0) == (AddResult.PENDING, b)
    assert len(table) == 2


def test_other_buckets_are_unaffected_by_a_full_one() -> None:
    table = RoutingTable(OWN, k=1)
    table.add(peer(id_in_bucket(255, 1), "10.0.1.1"), 0.0)
    assert table.add(peer(id_in_bucket(255, 2), "10.0.2.1"), 0.0)[0] is AddResult.PENDING
    assert table.add(peer(id_in_bucket(254, 2), "10.0.2.1"), 0.0)[0] is AddResult.ADDED


def test_re_adding_a_known_contact_updates_it() -> None:
    table = RoutingTable(OWN, k=3)
    a, b = peer(id_in_bucket(255, 1), "10.0.1.1"), peer(id_in_bucket(255, 2), "10.0.2.1")
    table.add(a, 1.0)
    table.add(b, 2.0)
    assert table.add(a, 3.0) == (AddResult.UPDATED, None)
    entry = table.get(a.node_id)
    assert entry is not None and entry.last_seen == 3.0
    assert [e.contact for e in table.buckets()[255]] == [b, a]


@pytest.mark.parametrize("host, port", [("10.9.9.9", 4000), ("10.0.1.1", 4999)])
def test_a_known_id_at_a_new_address_is_rejected(host: str, port: int) -> None:
    table = RoutingTable(OWN)
    original = peer(id_in_bucket(100), "10.0.1.1", 4000)
    table.add(original, 1.0)
    assert table.add(Contact(original.node_id, host, port), 2.0) == (AddResult.REJECTED, None)
    entry = table.get(original.node_id)
    assert entry is not None and entry.contact == original and entry.last_seen == 1.0


def test_failed_removes_after_max_failures() -> None:
    table = RoutingTable(OWN, k=4)
    a = peer(id_in_bucket(255, 1), "10.0.1.1")
    table.add(a, 0.0)
    assert table.failed(a.node_id) is False
    assert a.node_id in table
    assert table.failed(a.node_id) is True
    assert a.node_id not in table and len(table) == 0


def test_an_answer_resets_the_failure_count() -> None:
    table = RoutingTable(OWN, k=4)
    a = peer(id_in_bucket(255, 1), "10.0.1.1")
    table.add(a, 0.0)
    assert table.failed(a.node_id, max_failures=2) is False
    table.seen(a.node_id, 1.0)
    assert table.failed(a.node_id, max_failures=2) is False
    assert a.node_id in table


def test_failed_promotes_a_waiting_replacement_at_once() -> None:
    table = RoutingTable(OWN, k=2)
    a, b, c = (peer(id_in_bucket(255, i), f"10.0.{i}.1") for i in range(3))
    table.add(a, 0.0)
    table.add(b, 1.0)
    assert table.add(c, 2.0) == (AddResult.PENDING, a)
    # A replacement is waiting, so a single failure is enough.
    assert table.failed(a.node_id, max_failures=5) is True
    assert a.node_id not in table
    assert c.node_id in table and b.node_id in table
    assert len(table) == 2


def test_the_most_recent_replacement_is_promoted_first() -> None:
    table = RoutingTable(OWN, k=1)
    a, r1, r2 = (peer(id_in_bucket(255, i), f"10.0.{i}.1") for i in range(3))
    table.add(a, 0.0)
    table.add(r1, 1.0)
    table.add(r2, 2.0)
    assert table.failed(a.node_id) is True
    assert [e.contact for e in table.contacts()] == [r2]


def test_failed_for_an_unknown_contact_is_harmless() -> None:
    table = RoutingTable(OWN)
    assert table.failed(id_in_bucket(7)) is False
    assert len(table) == 0


def test_remove_drops_a_contact() -> None:
    table = RoutingTable(OWN)
    a = peer(id_in_bucket(10), "10.0.1.1")
    table.add(a, 0.0)
    table.remove(a.node_id)
    table.remove(a.node_id)
    assert a.node_id not in table and len(table) == 0 and table.buckets() == {}


def test_a_subnet_may_hold_only_a_few_slots_per_bucket() -> None:
    table = RoutingTable(OWN, k=20, subnet_limit=2, table_subnet_share=1.0)
    hosts = [f"198.51.100.{i + 1}" for i in range(5)]
    results = [table.add(peer(id_in_bucket(255, i), h), 0.0)[0] for i, h in enumerate(hosts)]
    assert results == [AddResult.ADDED] * 2 + [AddResult.REJECTED] * 3
    # Another /24 is fine, and so is the same /24 in another bucket.
    assert table.add(peer(id_in_bucket(255, 9), "198.51.101.1"), 0.0)[0] is AddResult.ADDED
    assert table.add(peer(id_in_bucket(254, 9), "198.51.100.9"), 0.0)[0] is AddResult.ADDED


def test_a_subnet_may_hold_only_a_tenth_of_the_whole_table() -> None:
    table = RoutingTable(OWN, k=20, subnet_limit=2)
    assert table.table_subnet_share == 0.1
    for i in range(38):  # honest contacts, each from its own /24, in buckets 255-254
        table.add(peer(id_in_bucket(255 - i // 20, i), f"10.{i}.0.1"), 0.0)
    # Sybils from one /24, one per bucket so that the per-bucket limit never bites.
    sybils = [peer(id_in_bucket(200 - i), f"203.0.113.{i + 1}") for i in range(12)]
    results = [table.add(c, 0.0)[0] for c in sybils]
    assert results == [AddResult.ADDED] * 4 + [AddResult.REJECTED] * 8
    assert table.subnet_count("203.0.113.200") == 4 and len(table) == 42  # 9.5 %
    assert not table.wants(peer(id_in_bucket(100), "203.0.113.77"), 0.0, 900.0)
    # Other subnets, and loopback, are untouched by it.
    assert table.add(peer(id_in_bucket(150), "203.0.114.1"), 0.0)[0] is AddResult.ADDED
    assert table.add(peer(id_in_bucket(149), "127.0.0.1"), 0.0)[0] is AddResult.ADDED
    # As the table grows, so does what the subnet may hold (still a tenth of it).
    for i in range(10):
        table.add(peer(id_in_bucket(253, i), f"10.{100 + i}.0.1"), 0.0)
    assert len(table) == 54
    assert table.add(sybils[4], 0.0)[0] is AddResult.ADDED
    assert table.add(sybils[5], 0.0)[0] is AddResult.REJECTED
    assert table.subnet_count("203.0.113.1") == 5


def test_a_small_table_still_admits_the_per_bucket_limit_from_a_subnet() -> None:
    table = RoutingTable(OWN, k=20, subnet_limit=2)
    assert table.table_subnet_limit == 2
    sybils = [peer(id_in_bucket(255 - i), f"203.0.113.{i + 1}") for i in range(3)]
    results = [table.add(c, 0.0)[0] for c in sybils]
    assert results == [AddResult.ADDED, AddResult.ADDED, AddResult.REJECTED]
    # A slot the subnet loses can be taken by another contact from it.
    table.remove(sybils[0].node_id)
    assert table.add(sybils[2], 0.0)[0] is AddResult.ADDED


def test_a_replacement_is_not_promoted_past_the_table_limit() -> None:
    table = RoutingTable(OWN, k=2, subnet_limit=1)
    # Bucket 255 is full of two /24s; a third /24 waits as a replacement there.
    table.add(peer(id_in_bucket(255, 0), "198.51.100.1"), 0.0)
    table.add(peer(id_in_bucket(255, 1), "198.51.101.1"), 0.0)
    waiting = peer(id_in_bucket(255, 2), "203.0.113.1")
    assert table.add(waiting, 1.0)[0] is AddResult.PENDING
    # Meanwhile that /24 reaches its table-wide limit (1 in so small a table) elsewhere.
    assert table.add(peer(id_in_bucket(254), "203.0.113.2"), 2.0)[0] is AddResult.ADDED
    assert table.failed(id_in_bucket(255, 0))
    assert waiting.node_id not in table and table.subnet_count("203.0.113.1") == 1


def test_ipv6_subnets_are_slash_48_in_the_whole_table_too() -> None:
    table = RoutingTable(OWN, k=20, subnet_limit=1)
    hosts = ["2001:db8:1::1", "2001:db8:1:2::1", "2001:db8:1:ffff::9"]
    results = [table.add(peer(id_in_bucket(250 - i), h), 0.0)[0] for i, h in enumerate(hosts)]
    assert results == [AddResult.ADDED, AddResult.REJECTED, AddResult.REJECTED]
    assert table.add(peer(id_in_bucket(240), "2001:db8:2::1"), 0.0)[0] is AddResult.ADDED


def test_ipv6_subnets_are_slash_48() -> None:
    table = RoutingTable(OWN, k=20, subnet_limit=1, table_subnet_share=1.0)
    same48 = ["2001:db8:1::1", "2001:db8:1:ffff::1"]
    assert ipaddress.ip_address(same48[1]) in ipaddress.ip_network("2001:db8:1::/48")
    assert table.add(peer(id_in_bucket(255, 1), same48[0]), 0.0)[0] is AddResult.ADDED
    assert table.add(peer(id_in_bucket(255, 2), same48[1]), 0.0)[0] is AddResult.REJECTED
    assert table.add(peer(id_in_bucket(255, 3), "2001:db8:2::1"), 0.0)[0] is AddResult.ADDED


def test_loopback_is_exempt_from_the_subnet_limit() -> None:
    table = RoutingTable(OWN, k=20, subnet_limit=2)
    for i in range(10):
        result, _ = table.add(peer(id_in_bucket(255, i), "127.0.0.1", 5000 + i), 0.0)
        assert result is AddResult.ADDED
    assert table.add(peer(id_in_bucket(254, 0), "::1", 5000), 0.0)[0] is AddResult.ADDED
    assert len(table) == 11


def test_closest_orders_by_xor_distance() -> None:
    table = RoutingTable(OWN, k=20)
    contacts = [peer(id_in_bucket(i), "127.0.0.1", 6000 + i) for i in range(0, 256, 8)]
    for c in contacts:
        table.add(c, 0.0)
    target = id_in_bucket(64, 5)
    got = table.closest(target, 5)
    assert got == sorted(contacts, key=lambda c: distance(c.node_id, target))[:5]
    assert got[0].node_id == id_in_bucket(64)


@PROPERTY
@given(
    ids=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2**40 - 1)), min_size=1, max_size=60),
    target=st.tuples(st.integers(-1, 45), st.integers(0, 2**45 - 1)),
    n=st.integers(1, 30),
    skip=st.integers(0, 59),
)
def test_closest_walks_the_buckets_in_distance_order(
    ids: list[tuple[int, int]], target: tuple[int, int], n: int, skip: int
) -> None:
    # Ids spread over 41 buckets near our own id and targets among and beyond them, so
    # that every bucket order (the target's bucket, the lower buckets by the target's
    # bits, the higher ones) is exercised, with buckets both full and short.
    table = RoutingTable(OWN, k=4)
    for index, noise in ids:
        table.add(peer(id_in_bucket(index, noise % (1 << index)), "127.0.0.1"), 0.0)
    top, noise = target
    goal = bytes(32) if top < 0 else id_in_bucket(top, noise % (1 << top))
    entries = [e.contact for e in table.contacts()]
    brute = sorted(entries, key=lambda c: distance(c.node_id, goal))
    assert table.closest(goal, n) == brute[:n]
    if brute:
        excluded = brute[skip % len(brute)].node_id
        want = [c for c in brute if c.node_id != excluded][:n]
        assert table.closest(goal, n, exclude=excluded) == want


def test_closest_with_a_count_of_zero_is_empty() -> None:
    table = RoutingTable(OWN)
    table.add(peer(id_in_bucket(9), "127.0.0.1"), 0.0)
    assert table.closest(OWN, 0) == []


# -------------------------------------------------------------------------- refreshing


def test_an_empty_table_has_no_stale_buckets() -> None:
    assert RoutingTable(OWN).stale_buckets(now=1e9, interval=1.0) == []


def test_stale_buckets_from_the_nearest_populated_bucket_outwards() -> None:
    table = RoutingTable(OWN)
    a = peer(id_in_bucket(250), "127.0.0.1")
    table.add(a, 0.0)
    # Bucket 250 was touched at 0; the others never.
    assert table.stale_buckets(now=50.0, interval=100.0) == [251, 252, 253, 254, 255]
    assert table.stale_buckets(now=100.0, interval=100.0) == [250, 251, 252, 253, 254, 255]


def test_lookups_and_answers_keep_a_bucket_fresh() -> None:
    table = RoutingTable(OWN)
    a = peer(id_in_bucket(250), "127.0.0.1")
    table.add(a, 0.0)
    table.touch(253, 60.0)
    assert table.stale_buckets(now=100.0, interval=100.0) == [250, 251, 252, 254, 255]
    table.seen(a.node_id, 90.0)
    assert table.stale_buckets(now=100.0, interval=100.0) == [251, 252, 254, 255]
    assert table.stale_buckets(now=200.0, interval=100.0) == [250, 251, 252, 253, 254, 255]


def test_buckets_nearer_than_the_nearest_contact_are_not_refreshed() -> None:
    table = RoutingTable(OWN)
    table.add(peer(id_in_bucket(3), "127.0.0.1"), 0.0)
    stale = table.stale_buckets(now=10.0, interval=1.0)
    assert stale[0] == 3 and stale == list(range(3, 256))
