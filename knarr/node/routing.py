"""The Kademlia routing table, as pure code: 256 k-buckets by XOR distance.

Only contacts that answered us are added (the caller's job), so unverified contacts can
never push out verified ones. A full bucket keeps its long-lived contacts: the caller is
told to ping the oldest and only evicts it if that ping fails; meanwhile the newcomer
waits in the bucket's replacement cache. Each bucket admits at most ``subnet_limit``
contacts from one /24 (IPv4) or /48 (IPv6), and the whole table admits a contact only if
its subnet then holds at most ``table_subnet_share`` of the table (or ``subnet_limit``
contacts, whichever is more): the per-bucket limit alone lets one network take two slots
in every bucket, a sixth of a typical table. A share rather than a count, because tables
grow with the network (a fixed count is too loose for small tables and needlessly tight
for large ones). Loopback is exempt from both limits. Times are passed in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from knarr.node.contact import ID_BITS, Contact, subnet_of


def bucket_index(own_id: bytes, node_id: bytes) -> int:
    """The bucket a peer belongs in: the position of the highest differing bit (0-255)."""
    return (int.from_bytes(own_id, "big") ^ int.from_bytes(node_id, "big")).bit_length() - 1


def random_id_in_bucket(own_id: bytes, index: int, entropy: bytes) -> bytes:
    """An id whose distance from ``own_id`` falls in bucket ``index`` (for refreshes)."""
    noise = int.from_bytes(entropy[:32].rjust(32, b"\0"), "big") & ((1 << index) - 1)
    distance = (1 << index) | noise
    return (int.from_bytes(own_id, "big") ^ distance).to_bytes(32, "big")


@dataclass(slots=True)
class Entry:
    contact: Contact
    last_seen: float
    failures: int = 0
    number: int = field(init=False, repr=False)  # the node id as an integer, for distances
    subnet: str | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.number = int.from_bytes(self.contact.node_id, "big")
        self.subnet = subnet_of(self.contact.host)


_EMPTY: OrderedDict[bytes, Entry] = OrderedDict()


TABLE_SUBNET_SHARE = 0.1
"""The largest share of a routing table that one /24 or /48 may take by default."""


class AddResult(Enum):
    ADDED = "added"
    UPDATED = "updated"
    PENDING = "pending"  # bucket full: ping ``oldest`` and evict it if it does not answer
    REJECTED = "rejected"


class RoutingTable:
    """k-buckets of verified contacts around ``own_id``."""

    def __init__(
        self, own_id: bytes, *, k: int = 20, subnet_limit: int = 2,
        table_subnet_share: float = TABLE_SUBNET_SHARE,
    ) -> None:
        self.own_id = own_id
        self.k = k
        self.subnet_limit = subnet_limit
        self.table_subnet_share = table_subnet_share
        self._per_subnet: dict[str, int] = {}  # contacts in the buckets, per subnet
        self._buckets: dict[int, OrderedDict[bytes, Entry]] = {}
        self._replacements: dict[int, OrderedDict[bytes, Entry]] = {}
        self._touched: dict[int, float] = {}
        self._size = 0
        self._own_number = int.from_bytes(own_id, "big")

    def __len__(self) -> int:
        return self._size

    def __contains__(self, node_id: object) -> bool:
        if not isinstance(node_id, bytes) or node_id == self.own_id:
            return False
        bucket = self._buckets.get(bucket_index(self.own_id, node_id))
        return bucket is not None and node_id in bucket

    def get(self, node_id: bytes) -> Entry | None:
        bucket = self._buckets.get(bucket_index(self.own_id, node_id))
        return bucket.get(node_id) if bucket else None

    def _subnet_full(self, entries: Iterable[Entry], host: str) -> bool:
        subnet = subnet_of(host)
        if subnet is None:
            return False
        return sum(1 for e in entries if e.subnet == subnet) >= self.subnet_limit

    @property
    def table_subnet_limit(self) -> int:
        """How many contacts one subnet may hold once one more contact is in the table."""
        return max(self.subnet_limit, int(self.table_subnet_share * (self._size + 1)))

    def _admits(self, bucket: Iterable[Entry], host: str) -> bool:
        """May a contact at ``host`` take a slot in ``bucket``: neither the bucket's nor
        the table's limit for its subnet would be passed."""
        subnet = subnet_of(host)
        if subnet is None:
            return True
        if self._per_subnet.get(subnet, 0) >= self.table_subnet_limit:
            return False
        return sum(1 for e in bucket if e.subnet == subnet) < self.subnet_limit

    def _put(self, bucket: OrderedDict[bytes, Entry], entry: Entry) -> None:
        bucket[entry.contact.node_id] = entry
        self._size += 1
        if entry.subnet is not None:
            self._per_subnet[entry.subnet] = self._per_subnet.get(entry.subnet, 0) + 1

    def _drop(self, bucket: OrderedDict[bytes, Entry], node_id: bytes) -> Entry | None:
        entry = bucket.pop(node_id, None)
        if entry is not None:
            self._size -= 1
            if entry.subnet is not None:
                left = self._per_subnet[entry.subnet] - 1
                if left:
                    self._per_subnet[entry.subnet] = left
                else:
                    del self._per_subnet[entry.subnet]
        return entry

    def subnet_count(self, host: str) -> int:
        """Contacts the table holds from ``host``'s subnet (0 for loopback)."""
        subnet = subnet_of(host)
        return 0 if subnet is None else self._per_subnet.get(subnet, 0)

    def add(self, contact: Contact, now: float) -> tuple[AddResult, Contact | None]:
        """Offer a contact that just answered us. Returns the outcome and, for
        ``PENDING``, the oldest contact of the full bucket, which the caller should ping."""
        if contact.node_id == self.own_id or len(contact.node_id) != 32:
            return AddResult.REJECTED, None
        index = bucket_index(self.own_id, contact.node_id)
        self._touched[index] = now
        bucket = self._buckets.setdefault(index, OrderedDict())
        entry = bucket.get(contact.node_id)
        if entry is not None:
            if entry.contact.addr != contact.addr:
                # A known id at a new address: keep the proven one until it fails.
                return AddResult.REJECTED, None
            entry.last_seen = now
            entry.failures = 0
            bucket.move_to_end(contact.node_id)
            return AddResult.UPDATED, None
        if not self._admits(bucket.values(), contact.host):
            return AddResult.REJECTED, None
        if len(bucket) < self.k:
            self._put(bucket, Entry(contact, now))
            spare = self._replacements.get(index)
            if spare is not None:
                spare.pop(contact.node_id, None)
            return AddResult.ADDED, None
        spare = self._replacements.setdefault(index, OrderedDict())
        spare.pop(contact.node_id, None)
        if not self._subnet_full(spare.values(), contact.host):
            spare[contact.node_id] = Entry(contact, now)
            while len(spare) > self.k:
                spare.popitem(last=False)
        oldest = next(iter(bucket.values()))
        return AddResult.PENDING, oldest.contact

    def wants(self, contact: Contact, now: float, fresh: float) -> bool:
        """Could an answer from ``contact`` (not in the table) get it in? Only if its
        bucket has room for it, or the bucket's oldest contact has not been heard from in
        ``fresh`` seconds (so it may be gone and is worth a ping)."""
        if contact.node_id == self.own_id or len(contact.node_id) != 32:
            return False
        bucket = self._buckets.get(bucket_index(self.own_id, contact.node_id))
        if not bucket:
            return self._admits((), contact.host)
        if contact.node_id in bucket or not self._admits(bucket.values(), contact.host):
            return False
        return len(bucket) < self.k or now - next(iter(bucket.values())).last_seen >= fresh

    def stale_oldest(self, node_id: bytes, now: float, fresh: float) -> Contact | None:
        """The oldest contact of ``node_id``'s bucket, if the bucket is full and that
        contact has not been heard from in ``fresh`` seconds: the one to ping (and evict
        if it does not answer) before a newcomer can have its place."""
        bucket = self._buckets.get(bucket_index(self.own_id, node_id))
        if not bucket or len(bucket) < self.k:
            return None
        oldest = next(iter(bucket.values()))
        return oldest.contact if now - oldest.last_seen >= fresh else None

    def seen(self, node_id: bytes, now: float) -> None:
        """A contact in the table answered: it becomes the most recently seen."""
        index = bucket_index(self.own_id, node_id)
        bucket = self._buckets.get(index)
        if bucket and node_id in bucket:
            entry = bucket[node_id]
            entry.last_seen = now
            entry.failures = 0
            bucket.move_to_end(node_id)
            self._touched[index] = now

    def failed(self, node_id: bytes, *, max_failures: int = 2) -> bool:
        """A contact did not answer. Removes it (promoting a replacement) once it has
        failed ``max_failures`` times in a row, or at once if a replacement is waiting.
        Returns whether it was removed."""
        index = bucket_index(self.own_id, node_id)
        bucket = self._buckets.get(index)
        if not bucket or node_id not in bucket:
            waiting = self._replacements.get(index)
            if waiting is not None:
                waiting.pop(node_id, None)
            return False
        entry = bucket[node_id]
        entry.failures += 1
        spare = self._replacements.get(index)
        if entry.failures < max_failures and not spare:
            return False
        self._drop(bucket, node_id)
        while spare:
            _, candidate = spare.popitem(last=True)
            if self._admits(bucket.values(), candidate.contact.host):
                self._put(bucket, candidate)
                break
        return True

    def remove(self, node_id: bytes) -> None:
        bucket = self._buckets.get(bucket_index(self.own_id, node_id))
        if bucket:
            self._drop(bucket, node_id)

    def touch(self, index: int, now: float) -> None:
        """Note that a lookup went through bucket ``index`` (it need not be refreshed)."""
        self._touched[index] = now

    def closest(
        self, target: bytes, count: int | None = None, *, exclude: bytes | None = None
    ) -> list[Contact]:
        """Up to ``count`` (default k) contacts nearest ``target``, nearest first.

        Buckets are visited in order of their distance to ``target``, so only the buckets
        that can hold the answer are sorted: with the target in bucket ``top``, every
        contact of bucket ``top`` is nearer than any other; then come all buckets below
        ``top`` (their distances share the top bit), then buckets above ``top`` in order.
        """
        n = self.k if count is None else count
        if n <= 0:
            return []
        t = int.from_bytes(target, "big")
        top = (self._own_number ^ t).bit_length() - 1
        buckets = self._buckets
        out: list[Contact] = []

        def take(entries: list[Entry]) -> bool:
            entries.sort(key=lambda e: e.number ^ t)
            out.extend(e.contact for e in entries[: n - len(out)])
            return len(out) >= n

        def group(indices: Iterable[int]) -> list[Entry]:
            return [
                e
                for i in indices
                for e in buckets.get(i, _EMPTY).values()
                if e.contact.node_id != exclude
            ]

        if top < 0:  # the target is our own id: nearer buckets first
            for i in sorted(buckets):
                if take(group((i,))):
                    return out
            return out
        if take(group((top,))) or take(group(i for i in buckets if i < top)):
            return out
        for i in sorted(i for i in buckets if i > top):
            if take(group((i,))):
                break
        return out

    def contacts(self) -> Iterator[Entry]:
        for bucket in self._buckets.values():
            yield from bucket.values()

    def buckets(self) -> dict[int, list[Entry]]:
        return {i: list(b.values()) for i, b in sorted(self._buckets.items()) if b}

    def stale_buckets(self, now: float, interval: float) -> list[int]:
        """Buckets that no lookup or contact has touched in ``interval`` seconds, from the
        nearest populated bucket outwards (lookups there find new peers)."""
        populated = [i for i, b in self._buckets.items() if b]
        if not populated:
            return []
        return [
            i
            for i in range(min(populated), ID_BITS)
            if now - self._touched.get(i, float("-inf")) >= interval
        ]
