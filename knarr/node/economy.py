"""Receipts, credit arithmetic, reputation scores and settlement statements: pure code.

A receipt is the provider's signed account of one task. Both sides keep it, and the
ledger and reputation are derived from receipts, so two honest nodes always agree on
what happened between them. Amounts are integers in micro-credits (1 credit =
1,000,000) so sums never drift.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from knarr.errors import InvalidRecord, RemoteProtocolError
from knarr.node import cbor
from knarr.node.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, node_id_of, verify

MICRO = 1_000_000
RECEIPT_MAGIC = b"RC"
SETTLEMENT_MAGIC = b"ST"
VERSION = 1
BATCH_VERSION = 2
"""A receipt signed with others in one batch: it carries its path to the batch's signed
Merkle root (``docs/protocol.md`` section 7.1)."""
BATCH_ROOT_MAGIC = b"RR"
MAX_BATCH = 256
"""Receipts under one root signature at most (a path of at most 8 hashes)."""
_BATCH_TRAILER = 2 + 2 + SIGNATURE_SIZE  # index, size, signature
OUTCOMES = ("completed", "failed", "timeout")
_RECEIPT_FIELDS = frozenset({"task", "skill", "price", "req", "in", "out", "t", "outcome", "ms"})


def to_micro(credits: float) -> int:
    if not math.isfinite(credits) or credits < 0:
        raise ValueError(f"not an amount of credits: {credits!r}")
    return round(credits * MICRO)


def to_credits(micro: int) -> float:
    return micro / MICRO


def digest(value: object) -> bytes:
    """SHA-256 of a value's canonical encoding (inputs and outputs in receipts)."""
    return hashlib.sha256(cbor.encode(value)).digest()


class InvalidReceipt(InvalidRecord):
    """A receipt or settlement statement that does not verify or does not match."""


@dataclass(frozen=True, eq=False)
class Receipt:
    """A verified, provider-signed receipt for one task."""

    task: bytes
    skill: str
    price: int
    requester_key: bytes
    input_hash: bytes
    output_hash: bytes
    time_ms: int
    outcome: str
    duration_ms: int
    provider_key: bytes
    raw: bytes

    # Cached: the books ask for these several times per receipt, each a SHA-256.
    @cached_property
    def provider(self) -> bytes:
        return node_id_of(self.provider_key)

    @cached_property
    def requester(self) -> bytes:
        return node_id_of(self.requester_key)

    @cached_property
    def id(self) -> str:
        """Unique per task: the hash of the signed receipt; for a receipt signed in a
        batch, its leaf hash, of its fields alone, so the id does not depend on how its
        path is written (:func:`sign_receipts` and :func:`parse_receipt` know it already
        and set it)."""
        if self.raw[2:3] == bytes([BATCH_VERSION]):
            _, _, end = _batch_position(self.raw)
            return _leaf(self.raw[:end]).hex()
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def charged(self) -> int:
        """What the requester owes for it: the price when completed, else nothing."""
        return self.price if self.outcome == "completed" else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task.hex(),
            "skill": self.skill,
            "price": to_credits(self.price),
            "charged": to_credits(self.charged),
            "requester": self.requester.hex(),
            "requester_key": self.requester_key.hex(),
            "provider_key": self.provider_key.hex(),
            "provider": self.provider.hex(),
            "input_hash": self.input_hash.hex(),
            "output_hash": self.output_hash.hex(),
            "time_ms": self.time_ms,
            "outcome": self.outcome,
            "duration_ms": self.duration_ms,
        }


@dataclass(frozen=True, slots=True)
class ReceiptDraft:
    """A receipt's fields before they are signed; :func:`sign_receipts` signs a batch."""

    task: bytes
    skill: str
    price: int
    requester_key: bytes
    input_hash: bytes
    output_hash: bytes
    time_ms: int
    outcome: str
    duration_ms: int

    def fields(self, provider_key: bytes, version: int) -> bytes:
        """The signed part: magic, version, the provider's key and the body."""
        body = {
            "task": self.task, "skill": self.skill, "price": self.price,
            "req": self.requester_key, "in": self.input_hash, "out": self.output_hash,
            "t": self.time_ms, "outcome": self.outcome, "ms": self.duration_ms,
        }
        return RECEIPT_MAGIC + bytes([version]) + provider_key + cbor.encode(body)

    def signed(self, provider_key: bytes, raw: bytes, leaf: bytes | None = None) -> Receipt:
        receipt = Receipt(
            self.task, self.skill, self.price, self.requester_key, self.input_hash,
            self.output_hash, self.time_ms, self.outcome, self.duration_ms, provider_key, raw,
        )
        if leaf is not None:
            receipt.__dict__["id"] = leaf.hex()  # what the cached property would compute again
        return receipt


def sign_receipt(
    provider: Identity,
    *,
    task: bytes,
    skill: str,
    price: int,
    requester_key: bytes,
    input_hash: bytes,
    output_hash: bytes,
    time_ms: int,
    outcome: str,
    duration_ms: int,
) -> Receipt:
    """One receipt, signed on its own (version 1)."""
    draft = ReceiptDraft(task, skill, price, requester_key, input_hash, output_hash, time_ms,
                         outcome, duration_ms)
    return sign_receipts(provider, [draft])[0]


def sign_receipts(provider: Identity, drafts: Sequence[ReceiptDraft]) -> list[Receipt]:
    """Sign receipts in batches of up to :data:`MAX_BATCH`: one Ed25519 signature over the
    Merkle root of each batch, and each receipt carries its path to that root. A batch of
    one is a version 1 receipt, signed on its own."""
    key = provider.public_key
    out: list[Receipt] = []
    for start in range(0, len(drafts), MAX_BATCH):
        batch = drafts[start:start + MAX_BATCH]
        if len(batch) == 1:
            # Our own signature over fields we just set: checking it again would cost a verify.
            signed = batch[0].fields(key, VERSION)
            out.append(batch[0].signed(key, signed + provider.sign(signed)))
            continue
        fields = [draft.fields(key, BATCH_VERSION) for draft in batch]
        leaves = [_leaf(f) for f in fields]
        root, paths = _merkle(leaves)
        size = len(batch).to_bytes(2, "big")
        signature = provider.sign(_root_message(key, size, root))
        for index, (draft, signed, path) in enumerate(zip(batch, fields, paths, strict=True)):
            raw = b"".join((signed, *path, index.to_bytes(2, "big"), size, signature))
            out.append(draft.signed(key, raw, leaves[index]))
    return out


def _leaf(fields: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + fields).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _root_message(key: bytes, size: bytes, root: bytes) -> bytes:
    return BATCH_ROOT_MAGIC + bytes([BATCH_VERSION]) + key + size + root


def _merkle(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The Merkle tree hash of RFC 9162 (section 2.1.1) over leaf hashes, and each
    leaf's inclusion path (its siblings, from the leaf upward)."""
    if len(leaves) == 1:
        return leaves[0], [[]]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)  # the largest power of 2 below n
    left, left_paths = _merkle(leaves[:split])
    right, right_paths = _merkle(leaves[split:])
    return _node(left, right), [p + [right] for p in left_paths] + [p + [left] for p in right_paths]


def path_length(index: int, size: int) -> int:
    """How many hashes the inclusion path of leaf ``index`` in a tree of ``size`` has."""
    length = 0
    while size > 1:
        split = 1 << ((size - 1).bit_length() - 1)
        if index < split:
            size = split
        else:
            index, size = index - split, size - split
        length += 1
    return length


def _root_of(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root that ``path`` leads to from ``leaf`` (RFC 9162, section 2.1.3.2), or
    ``None`` if the path does not fit ``index`` and ``size``."""
    fn, sn, r = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = _node(sibling, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, sibling)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None


_verified_roots: OrderedDict[bytes, None] = OrderedDict()
"""Root signatures verified lately: the receipts of one batch share one, and a
requester gets most of a batch at once. Exact: only the very bytes verified are kept."""


def _verify_root(key: bytes, message: bytes, signature: bytes) -> None:
    remembered = key + message + signature
    if remembered in _verified_roots:
        _verified_roots.move_to_end(remembered)
        return
    verify(key, message, signature)
    _verified_roots[remembered] = None
    if len(_verified_roots) > 1024:
        _verified_roots.popitem(last=False)


def parse_receipt(raw: bytes) -> Receipt:
    """Verify a receipt's signature and fields; :class:`InvalidReceipt` if anything is off."""
    prefix = len(RECEIPT_MAGIC) + 1 + PUBLIC_KEY_SIZE
    if len(raw) > 2048 or len(raw) < prefix + SIGNATURE_SIZE or raw[:2] != RECEIPT_MAGIC:
        raise InvalidReceipt("not a knarr receipt")
    key = raw[3:prefix]
    leaf = None
    try:
        if raw[2] == VERSION:
            end = len(raw) - SIGNATURE_SIZE
            verify(key, raw[:end], raw[end:])
        elif raw[2] == BATCH_VERSION:
            end, leaf = _check_batch_proof(raw, key, prefix)
        else:
            raise InvalidReceipt(f"unsupported receipt version {raw[2]}")
        body = cbor.decode(raw[prefix:end], max_depth=2, max_items=32)
    except InvalidReceipt:
        raise
    except RemoteProtocolError as exc:
        raise InvalidReceipt(f"receipt rejected: {exc}") from exc
    if not isinstance(body, dict) or body.keys() != _RECEIPT_FIELDS:
        raise InvalidReceipt("receipt has missing or unexpected fields")
    ok = (
        isinstance(body["task"], bytes) and len(body["task"]) == 16
        and isinstance(body["skill"], str) and len(body["skill"]) <= 64
        and type(body["price"]) is int and body["price"] >= 0
        and isinstance(body["req"], bytes) and len(body["req"]) == 32
        and isinstance(body["in"], bytes) and len(body["in"]) == 32
        and isinstance(body["out"], bytes) and len(body["out"]) == 32
        and type(body["t"]) is int and body["t"] >= 0
        and type(body["ms"]) is int and body["ms"] >= 0
        and body["outcome"] in OUTCOMES
    )
    if not ok:
        raise InvalidReceipt("receipt fields have the wrong types")
    draft = ReceiptDraft(
        body["task"], body["skill"], body["price"], body["req"], body["in"], body["out"],
        body["t"], body["outcome"], body["ms"],
    )
    return draft.signed(key, raw, leaf)


def _batch_position(raw: bytes) -> tuple[int, int, int]:
    """A version 2 receipt's index, its batch's size, and where its fields end and its
    path begins (the index and size fix the path's length)."""
    trailer = len(raw) - _BATCH_TRAILER
    index = int.from_bytes(raw[trailer:trailer + 2], "big")
    size = int.from_bytes(raw[trailer + 2:trailer + 4], "big")
    return index, size, trailer - 32 * path_length(index, size)


def _check_batch_proof(raw: bytes, key: bytes, prefix: int) -> tuple[int, bytes]:
    """Check a version 2 receipt's path and root signature; where its fields end and
    its leaf hash (which is also its id)."""
    index, size, end = _batch_position(raw)
    if not 2 <= size <= MAX_BATCH or index >= size:
        raise InvalidReceipt(f"receipt batch position {index} of {size} is impossible")
    if end <= prefix:
        raise InvalidReceipt("receipt is too short for its batch position")
    leaf = _leaf(raw[:end])
    path = [raw[i:i + 32] for i in range(end, len(raw) - _BATCH_TRAILER, 32)]
    root = _root_of(leaf, index, size, path)
    if root is None:  # pragma: no cover - path_length fits the path to index and size
        raise InvalidReceipt("receipt path does not fit its batch position")
    message = _root_message(key, size.to_bytes(2, "big"), root)
    _verify_root(key, message, raw[-SIGNATURE_SIZE:])
    return end, leaf


def check_receipt(
    receipt: Receipt,
    *,
    provider_key: bytes,
    requester_key: bytes,
    task: bytes,
    input_hash: bytes,
    output_hash: bytes,
    max_price: int,
    skill: str | None = None,
    completed: bool | None = None,
) -> None:
    """A requester's checks: the receipt is for this task, from this provider, for the
    input we sent and the output we got, at no more than the advertised price."""
    problems = [
        (receipt.provider_key != provider_key, "signed by another node"),
        (receipt.requester_key != requester_key, "made out to another requester"),
        (receipt.task != task, "for another task"),
        (receipt.input_hash != input_hash, "for another input"),
        (receipt.output_hash != output_hash, "for another output"),
        (receipt.price > max_price, "charging more than the advertised price"),
        (skill is not None and receipt.skill != skill, "for another skill"),
        (completed is not None and (receipt.outcome == "completed") != completed,
         "contradicting the result it came with"),
    ]
    for bad, why in problems:
        if bad:
            raise InvalidReceipt(f"receipt is {why}")


# ---------------------------------------------------------------------------- reputation


@dataclass(frozen=True, slots=True)
class ProviderStats:
    """What this node has seen of one provider."""

    provider: str
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    latency_ms_total: float = 0.0
    last_seen: float = 0.0

    @property
    def calls(self) -> int:
        return self.successes + self.failures + self.timeouts

    @property
    def mean_latency_ms(self) -> float:
        return self.latency_ms_total / self.successes if self.successes else 0.0

    @property
    def score(self) -> float:
        return reputation_score(self.successes, self.failures + self.timeouts,
                                self.mean_latency_ms)


def wilson_lower_bound(successes: float, total: float, z: float = 1.96) -> float:
    """The lower end of the 95 % Wilson interval of a success rate: a rate seen over
    few calls scores lower than the same rate seen over many."""
    if total <= 0:
        return 0.0
    p = successes / total
    centre = p + z * z / (2 * total)
    spread = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, (centre - spread) / (1 + z * z / total))


def reputation_score(successes: int, failures: int, mean_latency_ms: float) -> float:
    """0..1: the Wilson lower bound of the success rate (with one success and one failure
    as a prior, so an unknown provider sits between good and bad ones), less up to 0.1
    for latency (0 at 0 s, 0.1 at 10 s or more)."""
    reliability = wilson_lower_bound(successes + 1, successes + failures + 2)
    return max(0.0, reliability - min(0.1, mean_latency_ms / 100_000))


def rank(providers: Iterable[Any], stats: dict[str, ProviderStats], key: Any) -> list[Any]:
    """``providers`` sorted best first by score (unknown providers get the prior)."""
    prior = reputation_score(0, 0, 0.0)
    return sorted(
        providers,
        key=lambda p: -(stats[key(p)].score if key(p) in stats else prior),
    )


# ---------------------------------------------------------------------------- settlement


def receipts_hash(ids: Iterable[str]) -> bytes:
    """Commits a settlement to exactly the receipts it covers."""
    h = hashlib.sha256()
    for receipt_id in sorted(ids):
        h.update(bytes.fromhex(receipt_id))
    return h.digest()


@dataclass(frozen=True, slots=True)
class Statement:
    """What two peers agree to settle: ``amount`` micro-credits that ``debtor`` owes
    ``creditor`` over the receipts hashed into ``receipts``."""

    id: bytes
    creditor: bytes
    debtor: bytes
    amount: int
    receipts: bytes
    count: int

    def encode(self) -> bytes:
        return SETTLEMENT_MAGIC + bytes([VERSION]) + cbor.encode({
            "id": self.id, "cr": self.creditor, "db": self.debtor, "amount": self.amount,
            "receipts": self.receipts, "count": self.count,
        })

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "cr": self.creditor, "db": self.debtor, "amount": self.amount,
                "receipts": self.receipts, "count": self.count}

    @classmethod
    def from_wire(cls, body: Any) -> Statement:
        if not isinstance(body, dict) or body.keys() != {
            "id", "cr", "db", "amount", "receipts", "count"
        }:
            raise InvalidReceipt("settlement statement is incomplete or has unexpected fields")
        try:
            s = cls(body["id"], body["cr"], body["db"], body["amount"], body["receipts"],
                    body["count"])
        except (KeyError, TypeError) as exc:
            raise InvalidReceipt("settlement statement is incomplete") from exc
        ok = (
            isinstance(s.id, bytes) and len(s.id) == 16
            and isinstance(s.creditor, bytes) and len(s.creditor) == 32
            and isinstance(s.debtor, bytes) and len(s.debtor) == 32
            and s.creditor != s.debtor
            and type(s.amount) is int and s.amount > 0
            and isinstance(s.receipts, bytes) and len(s.receipts) == 32
            and type(s.count) is int and s.count >= 0
        )
        if not ok:
            raise InvalidReceipt("settlement statement has the wrong types")
        return s

    def verify(self, public_key: bytes, signature: bytes) -> None:
        try:
            verify(public_key, self.encode(), signature)
        except RemoteProtocolError as exc:
            raise InvalidReceipt("settlement signature does not verify") from exc
