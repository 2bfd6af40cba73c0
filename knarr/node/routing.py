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
from collections.abc import Collection, Iterable, Iterator
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


def bucket_order(offset: int, indices: Iterable[int]) -> list[int]:
    """The bucket ``indices`` in the order of their distance to a target, where
    ``offset`` is our id XOR the target.

    A contact in bucket i differs from us first at bit i, so its distance to the target
    is ``offset`` with bit i flipped and lower bits changed: above bit i it agrees with
    ``offset``. Hence, with ``top`` the highest bit of ``offset``: bucket ``top`` holds
    the nearest contacts (their distance lacks that bit); then come the buckets below it
    whose bit is set in ``offset`` (the flip clears it), highest first; then those whose
    bit is clear, lowest first; then the buckets above ``top``, lowest first. For the
    target our own id (``offset`` 0), that is simply lowest first."""
    ordered = sorted(indices)
    top = offset.bit_length() - 1
    if top < 0:
        return ordered
    below = [i for i in ordered if i < top]
    return (
        ([top] if top in ordered else [])
        + [i for i in reversed(below) if offset >> i & 1]
        + [i for i in below if not offset >> i & 1]
        + [i for i in ordered if i > top]
    )


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
        self._loopback = 0  # contacts in the buckets at loopback addresses
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

    def _admits(self, bucket: Collection[Entry], host: str) -> bool:
        """May a contact at ``host`` take a slot in ``bucket``: neither the bucket's nor
        the table's limit for its subnet would be passed."""
        subnet = subnet_of(host)
        if subnet is None:
            return True
        held = self._per_subnet.get(subnet, 0)
        if held < self.subnet_limit:
            return True  # below both limits, whatever the bucket holds
        if held >= self.table_subnet_limit:
            return False
        return sum(1 for e in bucket if e.subnet == subnet) < self.subnet_limit

    def _put(self, bucket: OrderedDict[bytes, Entry], entry: Entry) -> None:
        bucket[entry.contact.node_id] = entry
        self._size += 1
        if entry.subnet is not None:
            self._per_subnet[entry.subnet] = self._per_subnet.get(entry.subnet, 0) + 1
        else:
            self._loopback += 1

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
            else:
                self._loopback -= 1
        return entry

    @property
    def has_loopback(self) -> bool:
        """Whether any contact in the table is at a loopback address."""
        return self._loopback > 0

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

        Every bucket is one contiguous range of distances to ``target``, so the buckets
        are walked in the order of those ranges (:func:`bucket_order`) and only the
        buckets that hold the answer are sorted, one at a time.
        """
        n = self.k if count is None else count
        if n <= 0:
            return []
        t = int.from_bytes(target, "big")
        offset = self._own_number ^ t
        buckets = self._buckets
        out: list[Contact] = []

        def distance(e: Entry) -> int:
            return e.number ^ t

        top = offset.bit_length() - 1
        first = buckets.get(top)
        if first is not None and len(first) - (exclude in first) >= n:
            order = [top]  # the usual case: the target's own bucket holds the answer
        else:
            order = bucket_order(offset, buckets)
        for i in order:
            bucket = buckets[i]
            if not bucket:
                continue
            entries = sorted(bucket.values(), key=distance)
            if exclude is not None and exclude in bucket:
                entries = [e for e in entries if e.contact.node_id != exclude]
            out += [e.contact for e in entries[: n - len(out)]]
            if len(out) >= n:
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
