"""Skill records: what a provider publishes about a skill, signed, and how nodes keep them.

A record is its own signed object, so any node can check it, however many hands it
passed through::

    magic "KR" | version u8 | provider public key 32 | body (canonical CBOR) | sig 64

It is stored at the k closest nodes to ``H("skill:" + name)`` and to ``H("tag:" + tag)``
for each tag, where H is SHA-256. A storing node keeps one record per (provider, skill)
and replaces it only with a higher sequence number.

An older version of a record stays validly signed until it expires, and a node that never
saw the newer one cannot tell it is old. So a record for a slot the node does not hold
yet is taken without question only from its provider; offered by anyone else (a
hand-over, or a replay), it waits until the provider is asked (:class:`Unconfirmed`,
:func:`vouched`). Pure code: callers pass the time.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from knarr.config import MAX_DESCRIPTION_LENGTH as MAX_DESCRIPTION
from knarr.config import SKILL_NAME_RE
from knarr.errors import InvalidRecord, MalformedMessage, RecordTooLarge, RemoteProtocolError
from knarr.node import cbor
from knarr.node.contact import is_this_host
from knarr.node.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, node_id_of, verify

MAGIC = b"KR"
VERSION = 1
_PREFIX = len(MAGIC) + 1 + PUBLIC_KEY_SIZE
MAX_RECORD = 1200  # leaves room for a STORE or VALUE envelope inside one 1,400-byte datagram
MAX_TTL = 24 * 3600
DEFAULT_TTL = 3600
MAX_TAGS = 8
MAX_TAG = 32
PUBLISHED_VISIBILITIES = ("public", "whitelist")
_FIELDS = frozenset(
    ("name", "ver", "desc", "tags", "in", "out", "price", "vis")
    + ("host", "port", "side", "exp", "seq")
)


def skill_key(name: str) -> bytes:
    """Where records for skill ``name`` live in the DHT."""
    return hashlib.sha256(b"skill:" + name.encode()).digest()


def names_local_host(host: str) -> bool:
    """Whether ``host`` means this very machine (a loopback or unspecified address, or
    ``localhost``). Such a record is only usable between nodes on one machine: from
    anywhere else it would aim a requester's task connection, or a node's confirmation
    query, at the requester's own local services. (A name that only resolves to
    loopback through DNS is caught where it is resolved: :func:`connectable`.)"""
    lowered = host.lower().rstrip(".")
    if lowered == "localhost" or lowered.endswith(".localhost"):
        return True
    try:
        return is_this_host(host)
    except ValueError:
        return False


def connectable(host: str, addresses: Iterable[str]) -> list[str]:
    """Of the addresses a record's ``host`` name resolved to, those a connection may go
    to. A name that resolves to this machine without saying so (not ``localhost``) is
    the DNS form of a record naming a loopback address: from anywhere else it would aim
    our connection at our own local services, so those addresses are dropped. A name
    that does say so only ever comes from a loopback peer (see :func:`names_local_host`)."""
    if names_local_host(host):
        return list(addresses)
    usable = []
    for address in addresses:
        try:
            if is_this_host(address):
                continue
        except ValueError:
            continue
        usable.append(address)
    return usable


def servable(kind: str, name: str) -> bool:
    """Whether a record could ever answer a query for skill or tag ``name``: unmet
    demand counts only such names, so junk queries cannot fill the books."""
    if kind == "skill":
        return SKILL_NAME_RE.fullmatch(name) is not None
    return kind == "tag" and 0 < len(name) <= MAX_TAG


def tag_key(tag: str) -> bytes:
    """Where records carrying ``tag`` are indexed in the DHT."""
    return hashlib.sha256(b"tag:" + tag.encode()).digest()


@dataclass(frozen=True, slots=True, eq=False)
class SkillRecord:
    """A verified skill record. ``raw`` is the signed encoding it came from."""

    name: str
    version: str
    description: str
    tags: tuple[str, ...]
    input_schema: Mapping[str, str]
    output_schema: Mapping[str, str]
    price: float
    visibility: str
    host: str
    port: int
    sidecar_port: int
    expires: int
    seq: int
    public_key: bytes
    raw: bytes = field(repr=False)

    @property
    def provider_id(self) -> bytes:
        return node_id_of(self.public_key)

    @property
    def slot(self) -> tuple[bytes, str]:
        """The identity of a record: one per provider and skill name."""
        return (self.public_key, self.name)

    def keys(self) -> set[bytes]:
        """Every DHT key this record is stored under."""
        return {skill_key(self.name), *(tag_key(t) for t in self.tags)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view, as ``knarr query --json`` prints it."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "tags": list(self.tags),
            "input_schema": dict(self.input_schema),
            "output_schema": dict(self.output_schema),
            "price": self.price,
            "visibility": self.visibility,
            "provider": self.provider_id.hex(),
            "public_key": self.public_key.hex(),
            "host": self.host,
            "port": self.port,
            "sidecar_port": self.sidecar_port,
            "expires": self.expires,
            "seq": self.seq,
        }


def _schema(value: Any, key: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 32
        for k, v in value.items()
    ):
        raise InvalidRecord(f"record field {key!r} must map field names to type names")
    return value


def _check_fields(body: Mapping[str, Any]) -> None:
    """Shared by signing and parsing: what any valid record body must satisfy."""
    name = body["name"]
    if not isinstance(name, str) or not SKILL_NAME_RE.fullmatch(name):
        raise InvalidRecord(f"skill name {name!r} must match {SKILL_NAME_RE.pattern}")
    if not isinstance(body["ver"], str) or len(body["ver"]) > 32:
        raise InvalidRecord("version must be text of at most 32 characters")
    desc = body["desc"]
    if not isinstance(desc, str) or len(desc) > MAX_DESCRIPTION:
        raise InvalidRecord(f"description must be text of at most {MAX_DESCRIPTION} characters")
    tags = body["tags"]
    if (
        not isinstance(tags, list)
        or len(tags) > MAX_TAGS
        or not all(isinstance(t, str) and 0 < len(t) <= MAX_TAG for t in tags)
        or len(set(tags)) != len(tags)
    ):
        raise InvalidRecord(f"tags must be at most {MAX_TAGS} distinct texts of 1-{MAX_TAG} chars")
    price = body["price"]
    if type(price) not in (int, float) or not math.isfinite(price) or price < 0:
        raise InvalidRecord("price must be a finite number >= 0")
    if body["vis"] not in PUBLISHED_VISIBILITIES:
        raise InvalidRecord(f"visibility must be one of {PUBLISHED_VISIBILITIES}")
    if not isinstance(body["host"], str) or not 0 < len(body["host"]) <= 253:
        raise InvalidRecord("host must be a non-empty text")
    for key, low in (("port", 1), ("side", 0)):
        value = body[key]
        if type(value) is not int or not low <= value <= 65535:
            raise InvalidRecord(f"{key} must be an integer port")
    for key in ("exp", "seq"):
        if type(body[key]) is not int or body[key] < 0:
            raise InvalidRecord(f"{key} must be a non-negative integer")
    _schema(body["in"], "in")
    _schema(body["out"], "out")


def _listed(value: Any) -> Any:
    """Tuples become lists; anything else (a lone string, say) is left for the checks."""
    return list(value) if isinstance(value, tuple) else value


def sign_record(
    identity: Identity,
    sheet: Mapping[str, Any],
    *,
    host: str,
    port: int,
    sidecar_port: int = 0,
    expires: int,
    seq: int,
) -> SkillRecord:
    """Build and sign a record from a skill sheet (the dict ``DHTNode.announce`` takes)."""
    body: dict[str, Any] = {
        "name": sheet.get("name"),
        "ver": str(sheet.get("version", "1.0.0")),
        "desc": sheet.get("description", ""),
        "tags": _listed(sheet.get("tags", [])),
        "in": dict(sheet.get("input_schema", {})),
        "out": dict(sheet.get("output_schema", {})),
        "price": sheet.get("price", 1.0),
        "vis": sheet.get("visibility", "public"),
        "host": host,
        "port": port,
        "side": sidecar_port,
        "exp": expires,
        "seq": seq,
    }
    _check_fields(body)
    signed = MAGIC + bytes([VERSION]) + identity.public_key + cbor.encode(body)
    raw = signed + identity.sign(signed)
    if len(raw) > MAX_RECORD:
        raise RecordTooLarge(
            f"skill {body['name']!r}: its record is {len(raw)} bytes, the limit is {MAX_RECORD}; "
            "shorten the description, tags or schemas"
        )
    return parse_record(raw, now_s=0)


def parse_record(raw: bytes, *, now_s: int) -> SkillRecord:
    """Verify and decode a record; expired records (``exp <= now_s``) are invalid."""
    if len(raw) > MAX_RECORD:
        raise InvalidRecord(f"record is {len(raw)} bytes; the limit is {MAX_RECORD}")
    if len(raw) < _PREFIX + SIGNATURE_SIZE + 1 or raw[:2] != MAGIC or raw[2] != VERSION:
        raise InvalidRecord("not a knarr skill record")
    public_key = raw[3:_PREFIX]
    signed, signature = raw[:-SIGNATURE_SIZE], raw[-SIGNATURE_SIZE:]
    try:
        verify(public_key, signed, signature)
        body = cbor.decode(signed[_PREFIX:], max_depth=4, max_items=256)
    except RemoteProtocolError as exc:
        raise InvalidRecord(f"record rejected: {exc}") from exc
    if not isinstance(body, dict) or body.keys() != _FIELDS:
        raise InvalidRecord("record body has missing or unexpected fields")
    _check_fields(body)
    if body["exp"] <= now_s:
        raise InvalidRecord("record has expired")
    return SkillRecord(
        name=body["name"],
        version=body["ver"],
        description=body["desc"],
        tags=tuple(body["tags"]),
        input_schema=body["in"],
        output_schema=body["out"],
        price=float(body["price"]),
        visibility=body["vis"],
        host=body["host"],
        port=body["port"],
        sidecar_port=body["side"],
        expires=body["exp"],
        seq=body["seq"],
        public_key=public_key,
        raw=raw,
    )


class Unconfirmed(InvalidRecord):
    """A third party offered a record for a (provider, skill) slot this store does not
    hold: only its provider can say whether it is still the newest version. ``record``
    is the parsed, otherwise valid offer."""

    def __init__(self, record: SkillRecord) -> None:
        super().__init__("record not stored yet: the provider is asked to confirm it")
        self.record = record


def vouched(offer: SkillRecord, answer: Iterable[SkillRecord]) -> SkillRecord | None:
    """What to keep after asking the provider about ``offer``: the provider's own
    version of that slot (``answer``, records it returned) or ``offer`` if that is newer
    still; ``None`` if the provider holds no version of it (the skill is gone, or the
    offer was never its record)."""
    own = [r for r in answer if r.slot == offer.slot]
    if not own:
        return None
    newest = max(own, key=lambda r: r.seq)
    return offer if offer.seq > newest.seq else newest


class RecordStore:
    """Records this node stores for others, keyed by DHT key, bounded in size."""

    def __init__(
        self, *, max_per_key: int = 1000, max_total: int = 100_000, max_ttl: int = MAX_TTL
    ) -> None:
        self.max_per_key = max_per_key
        self.max_total = max_total
        self.max_ttl = max_ttl
        self._by_key: dict[bytes, dict[tuple[bytes, str], SkillRecord]] = {}
        self._total = 0

    def __len__(self) -> int:
        return self._total

    def holds(self, key: bytes, slot: tuple[bytes, str]) -> bool:
        slots = self._by_key.get(key)
        return slots is not None and slot in slots

    def put(
        self, key: bytes, raw: bytes, *, now_s: int, sender: bytes | None = None,
        from_loopback: bool = True,
    ) -> SkillRecord:
        """Validate and keep ``raw`` under ``key``; :class:`InvalidRecord` says why not.

        ``sender`` is the node id that offered it (``None``: we fetched it ourselves or it
        is our own). A record from anyone but its provider, for a slot not held here, is
        refused with :class:`Unconfirmed` (ask the provider, then :meth:`put` what
        :func:`vouched` returns). Unless it came ``from_loopback``, a record naming a
        local host is refused (see :func:`names_local_host`)."""
        try:
            record = parse_record(raw, now_s=now_s)
        except MalformedMessage as exc:  # pragma: no cover - parse_record wraps these
            raise InvalidRecord(str(exc)) from exc
        if not from_loopback and names_local_host(record.host):
            raise InvalidRecord("record names a loopback host")
        if key not in record.keys():
            raise InvalidRecord("record does not belong under this key")
        if record.expires > now_s + self.max_ttl:
            raise InvalidRecord("record expiry is too far in the future")
        slots = self._by_key.get(key)
        old = slots.get(record.slot) if slots else None
        if old is None and sender is not None and sender != record.provider_id:
            raise Unconfirmed(record)
        if old is not None:
            if record.seq < old.seq or (record.seq == old.seq and record.raw != old.raw):
                raise InvalidRecord(f"stale record: sequence {record.seq} <= stored {old.seq}")
            slots[record.slot] = record  # type: ignore[index]
            return record
        if slots is not None and len(slots) >= self.max_per_key:
            self._expire_key(key, now_s)
            if len(slots) >= self.max_per_key:
                raise InvalidRecord("too many records under this key")
        if self._total >= self.max_total:
            self.expire(now_s)
            if self._total >= self.max_total:
                raise InvalidRecord("record store is full")
        self._by_key.setdefault(key, {})[record.slot] = record
        self._total += 1
        return record

    def get(self, key: bytes, *, now_s: int) -> list[SkillRecord]:
        """Live records under ``key``, in a stable order (by provider, then name)."""
        self._expire_key(key, now_s)
        slots = self._by_key.get(key)
        return [slots[s] for s in sorted(slots)] if slots else []

    def keys(self) -> Iterable[bytes]:
        return list(self._by_key)

    def _expire_key(self, key: bytes, now_s: int) -> None:
        slots = self._by_key.get(key)
        if not slots:
            return
        dead = [s for s, r in slots.items() if r.expires <= now_s]
        for s in dead:
            del slots[s]
        self._total -= len(dead)
        if not slots:
            del self._by_key[key]

    def expire(self, now_s: int) -> None:
        for key in list(self._by_key):
            self._expire_key(key, now_s)
