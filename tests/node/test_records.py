"""Skill records: signing, validation, and the bounded store that keeps them for others."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from knarr.errors import InvalidRecord, LocalProtocolError, RecordTooLarge
from knarr.node import cbor
from knarr.node.identity import Identity
from knarr.node.records import (
    MAX_RECORD,
    MAX_TTL,
    RecordStore,
    SkillRecord,
    Unconfirmed,
    parse_record,
    sign_record,
    skill_key,
    tag_key,
    vouched,
)

NOW = 1_700_000_000
ALICE = Identity.from_seed(b"\x0a" * 32)
BOB = Identity.from_seed(b"\x0b" * 32)
SHEET: dict[str, Any] = {
    "name": "translate",
    "version": "1.2.0",
    "description": "Translate text between languages",
    "tags": ["nlp", "text"],
    "input_schema": {"text": "string", "to": "string"},
    "output_schema": {"text": "string"},
    "price": 2.5,
    "visibility": "public",
}


def make(
    identity: Identity = ALICE, *, seq: int = 1, expires: int = NOW + 3600, **changes: Any
) -> SkillRecord:
    return sign_record(
        identity,
        {**SHEET, **changes},
        host="203.0.113.7",
        port=9000,
        sidecar_port=9001,
        expires=expires,
        seq=seq,
    )


def body_of(record: SkillRecord) -> dict[str, Any]:
    body = cbor.decode(record.raw[35:-64])
    assert isinstance(body, dict)
    return body


def resign(identity: Identity, body: object) -> bytes:
    """A record with a hand-made body, validly signed (to reach the field checks)."""
    signed = b"KR\x01" + identity.public_key + cbor.encode(body)
    return signed + identity.sign(signed)


# --------------------------------------------------------------------------- records


def test_keys_are_sha256_of_the_prefixed_name() -> None:
    assert skill_key("translate") == hashlib.sha256(b"skill:translate").digest()
    assert tag_key("nlp") == hashlib.sha256(b"tag:nlp").digest()
    assert skill_key("nlp") != tag_key("nlp")


def test_a_signed_record_parses_back() -> None:
    record = make()
    parsed = parse_record(record.raw, now_s=NOW)
    assert parsed.raw == record.raw
    assert parsed.name == "translate" and parsed.version == "1.2.0"
    assert parsed.description == SHEET["description"]
    assert parsed.tags == ("nlp", "text")
    assert dict(parsed.input_schema) == SHEET["input_schema"]
    assert dict(parsed.output_schema) == SHEET["output_schema"]
    assert parsed.price == 2.5 and parsed.visibility == "public"
    assert (parsed.host, parsed.port, parsed.sidecar_port) == ("203.0.113.7", 9000, 9001)
    assert (parsed.expires, parsed.seq) == (NOW + 3600, 1)
    assert parsed.public_key == ALICE.public_key
    assert parsed.provider_id == ALICE.node_id
    assert parsed.slot == (ALICE.public_key, "translate")
    assert parsed.keys() == {skill_key("translate"), tag_key("nlp"), tag_key("text")}
    assert len(record.raw) <= MAX_RECORD


def test_signing_is_deterministic() -> None:
    assert make().raw == make().raw
    assert make(seq=2).raw != make().raw


def test_to_dict_is_the_json_view() -> None:
    view = make().to_dict()
    assert view == {
        "name": "translate",
        "version": "1.2.0",
        "description": SHEET["description"],
        "tags": ["nlp", "text"],
        "input_schema": SHEET["input_schema"],
        "output_schema": SHEET["output_schema"],
        "price": 2.5,
        "visibility": "public",
        "provider": ALICE.node_id.hex(),
        "public_key": ALICE.public_key.hex(),
        "host": "203.0.113.7",
        "port": 9000,
        "sidecar_port": 9001,
        "expires": NOW + 3600,
        "seq": 1,
    }
    assert json.loads(json.dumps(view)) == view


def test_sheet_defaults() -> None:
    record = sign_record(ALICE, {"name": "echo"}, host="h", port=1, expires=NOW, seq=0)
    assert (record.version, record.description, record.tags) == ("1.0.0", "", ())
    assert (record.price, record.visibility, record.sidecar_port) == (1.0, "public", 0)


def test_an_integer_price_reads_back_as_a_float() -> None:
    record = parse_record(make(price=3).raw, now_s=NOW)
    assert record.price == 3.0 and isinstance(record.price, float)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda raw: raw[:50] + bytes([raw[50] ^ 1]) + raw[51:],  # body
        lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]),  # signature
        lambda raw: raw[:3] + BOB.public_key + raw[35:],  # someone else's key
        lambda raw: raw[:-10],  # truncated
        lambda raw: b"XX" + raw[2:],  # magic
        lambda raw: raw[:2] + b"\x02" + raw[3:],  # version
        lambda raw: b"KR\x01",
        lambda raw: raw + b"\x00" * (MAX_RECORD + 1 - len(raw)),
    ],
    ids=["body", "signature", "key", "truncated", "magic", "version", "stub", "oversized"],
)
def test_a_tampered_record_is_invalid(tamper: Any) -> None:
    with pytest.raises(InvalidRecord):
        parse_record(tamper(make().raw), now_s=NOW)


def test_an_expired_record_is_invalid() -> None:
    record = make(expires=NOW + 10)
    assert parse_record(record.raw, now_s=NOW + 9)
    with pytest.raises(InvalidRecord, match="expired"):
        parse_record(record.raw, now_s=NOW + 10)


@pytest.mark.parametrize(
    "change",
    [
        {"extra": 1},
        {"seq": -1},
        {"exp": "soon"},
        {"price": True},
        {"price": -1},
        {"vis": "private"},
        {"host": ""},
        {"port": 0},
        {"side": 65536},
        {"tags": ["a", "a"]},
        {"in": {"x": 1}},
        {"name": "Not A Name"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_signed_record_with_a_bad_field_is_invalid(change: dict[str, Any]) -> None:
    body = {**body_of(make()), **change}
    assert parse_record(resign(ALICE, body_of(make())), now_s=NOW)  # the control
    with pytest.raises(InvalidRecord):
        parse_record(resign(ALICE, body), now_s=NOW)


def test_a_signed_record_missing_a_field_or_not_a_map_is_invalid() -> None:
    body = body_of(make())
    del body["desc"]
    for bad in (body, [1, 2, 3], "record"):
        with pytest.raises(InvalidRecord):
            parse_record(resign(ALICE, bad), now_s=NOW)


@pytest.mark.parametrize(
    "change",
    [
        {"name": "Translate"},
        {"name": ""},
        {"name": "-translate"},
        {"name": "a" * 65},
        {"name": "has space"},
        {"name": None},
        {"description": "x" * 257},
        {"tags": [f"t{i}" for i in range(9)]},
        {"tags": ["ok", ""]},
        {"tags": ["x" * 33]},
        {"tags": ["dup", "dup"]},
        {"version": "v" * 33},
        {"price": float("nan")},
        {"price": float("inf")},
        {"price": -0.5},
        {"price": "free"},
        {"visibility": "private"},
        {"input_schema": {"x": 1}},
        {"output_schema": {"k" * 65: "string"}},
    ],
    ids=lambda c: f"{next(iter(c))}={str(next(iter(c.values())))[:12]}",
)
def test_an_invalid_sheet_cannot_be_signed(change: dict[str, Any]) -> None:
    with pytest.raises(InvalidRecord):
        make(**change)


def test_the_limits_themselves_are_allowed() -> None:
    record = make(
        name="a" * 64,
        description="d" * 256,
        tags=[f"{i}" * 32 for i in range(8)],
        price=0,
    )
    assert len(record.tags) == 8 and len(record.description) == 256


def test_tags_given_as_a_string_are_refused() -> None:
    with pytest.raises(InvalidRecord):
        make(tags="nlp")


def test_a_huge_sheet_is_too_large_for_a_record() -> None:
    schema = {f"field_{i:03d}_" + "x" * 50: "string" for i in range(40)}
    with pytest.raises(RecordTooLarge, match="limit is 1200") as info:
        make(input_schema=schema)
    assert isinstance(info.value, LocalProtocolError)


def test_invalid_records_are_never_built_with_bad_ports() -> None:
    for port in (0, 65536):
        with pytest.raises(InvalidRecord):
            sign_record(ALICE, SHEET, host="h", port=port, expires=NOW + 1, seq=1)


# ---------------------------------------------------------------------- record store

KEY = skill_key("translate")


def test_a_stored_record_can_be_read_back() -> None:
    store = RecordStore()
    record = make()
    assert store.put(KEY, record.raw, now_s=NOW).raw == record.raw
    assert [r.raw for r in store.get(KEY, now_s=NOW)] == [record.raw]
    assert store.get(tag_key("nlp"), now_s=NOW) == []  # each key is stored separately
    assert len(store) == 1 and list(store.keys()) == [KEY]


def test_a_record_is_kept_under_each_of_its_keys() -> None:
    store = RecordStore()
    record = make()
    for key in record.keys():
        store.put(key, record.raw, now_s=NOW)
    assert len(store) == 3
    assert all(store.get(key, now_s=NOW)[0].raw == record.raw for key in record.keys())


def test_a_higher_sequence_from_the_same_provider_replaces() -> None:
    store = RecordStore()
    store.put(KEY, make(seq=1).raw, now_s=NOW)
    newer = make(seq=2, description="better")
    store.put(KEY, newer.raw, now_s=NOW)
    assert [r.raw for r in store.get(KEY, now_s=NOW)] == [newer.raw]
    assert len(store) == 1


def test_a_lower_sequence_is_refused() -> None:
    store = RecordStore()
    current = make(seq=5)
    store.put(KEY, current.raw, now_s=NOW)
    with pytest.raises(InvalidRecord, match="stale"):
        store.put(KEY, make(seq=4, description="older").raw, now_s=NOW)
    assert [r.raw for r in store.get(KEY, now_s=NOW)] == [current.raw]


def test_an_equal_sequence_with_other_content_is_refused() -> None:
    store = RecordStore()
    current = make(seq=5)
    store.put(KEY, current.raw, now_s=NOW)
    with pytest.raises(InvalidRecord, match="stale"):
        store.put(KEY, make(seq=5, description="sneaky").raw, now_s=NOW)
    assert [r.raw for r in store.get(KEY, now_s=NOW)] == [current.raw]


def test_storing_the_same_record_again_is_accepted() -> None:
    store = RecordStore()
    record = make(seq=5)
    store.put(KEY, record.raw, now_s=NOW)
    assert store.put(KEY, record.raw, now_s=NOW + 1).raw == record.raw
    assert len(store) == 1


def test_providers_do_not_replace_each_other() -> None:
    store = RecordStore()
    mine, theirs = make(ALICE, seq=9), make(BOB, seq=1)
    store.put(KEY, mine.raw, now_s=NOW)
    store.put(KEY, theirs.raw, now_s=NOW)
    got = store.get(KEY, now_s=NOW)
    assert {r.raw for r in got} == {mine.raw, theirs.raw}
    assert [r.public_key for r in got] == sorted([ALICE.public_key, BOB.public_key])


def test_a_record_under_a_key_it_does_not_belong_to_is_refused() -> None:
    store = RecordStore()
    for key in (skill_key("other"), tag_key("unrelated"), b"\x00" * 32):
        with pytest.raises(InvalidRecord, match="key"):
            store.put(key, make().raw, now_s=NOW)
    assert len(store) == 0


def test_an_expiry_too_far_ahead_is_refused() -> None:
    store = RecordStore()
    assert store.put(KEY, make(ALICE, expires=NOW + MAX_TTL).raw, now_s=NOW)
    with pytest.raises(InvalidRecord, match="future"):
        store.put(KEY, make(BOB, expires=NOW + MAX_TTL + 1).raw, now_s=NOW)
    small = RecordStore(max_ttl=60)
    with pytest.raises(InvalidRecord, match="future"):
        small.put(KEY, make().raw, now_s=NOW)


def test_garbage_is_refused() -> None:
    with pytest.raises(InvalidRecord):
        RecordStore().put(KEY, b"\x00" * 200, now_s=NOW)


def test_records_per_key_are_bounded() -> None:
    store = RecordStore(max_per_key=2)
    store.put(KEY, make(ALICE, expires=NOW + 10).raw, now_s=NOW)
    store.put(KEY, make(BOB).raw, now_s=NOW)
    carol = Identity.from_seed(b"\x0c" * 32)
    with pytest.raises(InvalidRecord, match="too many"):
        store.put(KEY, make(carol).raw, now_s=NOW)
    # A replacement does not need a new slot.
    store.put(KEY, make(BOB, seq=2).raw, now_s=NOW)
    # Once Alice's record expires, Carol's fits.
    store.put(KEY, make(carol).raw, now_s=NOW + 10)
    assert {r.public_key for r in store.get(KEY, now_s=NOW + 10)} == {
        BOB.public_key,
        carol.public_key,
    }
    assert len(store) == 2


def test_records_in_total_are_bounded() -> None:
    store = RecordStore(max_total=2)
    store.put(skill_key("a"), make(name="a", tags=[], expires=NOW + 10).raw, now_s=NOW)
    store.put(skill_key("b"), make(name="b", tags=[]).raw, now_s=NOW)
    with pytest.raises(InvalidRecord, match="full"):
        store.put(skill_key("c"), make(name="c", tags=[]).raw, now_s=NOW)
    assert len(store) == 2
    store.put(skill_key("c"), make(name="c", tags=[]).raw, now_s=NOW + 10)
    assert len(store) == 2
    assert store.get(skill_key("a"), now_s=NOW + 10) == []


def test_get_drops_expired_records() -> None:
    store = RecordStore()
    store.put(KEY, make(ALICE, expires=NOW + 10).raw, now_s=NOW)
    store.put(KEY, make(BOB, expires=NOW + 20).raw, now_s=NOW)
    assert len(store.get(KEY, now_s=NOW + 9)) == 2
    assert [r.public_key for r in store.get(KEY, now_s=NOW + 10)] == [BOB.public_key]
    assert len(store) == 1
    assert store.get(KEY, now_s=NOW + 20) == []
    assert len(store) == 0 and list(store.keys()) == []


def test_expire_sweeps_every_key() -> None:
    store = RecordStore()
    record = make(expires=NOW + 10)
    for key in record.keys():
        store.put(key, record.raw, now_s=NOW)
    store.expire(NOW + 9)
    assert len(store) == 3
    store.expire(NOW + 10)
    assert len(store) == 0 and list(store.keys()) == []


# --------------------------------------------------------------------------- replays

CAROL = Identity.from_seed(b"\x0c" * 32)


def test_a_third_party_cannot_introduce_a_record_unconfirmed() -> None:
    store = RecordStore()
    older = make(seq=1)
    with pytest.raises(Unconfirmed) as caught:
        store.put(KEY, older.raw, now_s=NOW, sender=CAROL.node_id)
    assert caught.value.record.raw == older.raw and not store.holds(KEY, older.slot)
    # From its provider, or fetched by ourselves (no sender), it is taken at once.
    store.put(KEY, older.raw, now_s=NOW, sender=ALICE.node_id)
    assert store.holds(KEY, older.slot)


def test_a_third_party_may_bring_a_newer_version_of_a_held_record() -> None:
    store = RecordStore()
    store.put(KEY, make(seq=1).raw, now_s=NOW)
    newer = make(seq=2, description="newer")
    store.put(KEY, newer.raw, now_s=NOW, sender=CAROL.node_id)
    assert [r.raw for r in store.get(KEY, now_s=NOW)] == [newer.raw]
    with pytest.raises(InvalidRecord, match="stale"):
        store.put(KEY, make(seq=1).raw, now_s=NOW, sender=CAROL.node_id)


def test_invalid_records_are_refused_before_any_confirmation() -> None:
    store = RecordStore()
    with pytest.raises(InvalidRecord) as caught:
        store.put(KEY, make(expires=NOW).raw, now_s=NOW, sender=CAROL.node_id)
    assert not isinstance(caught.value, Unconfirmed)


def test_the_provider_vouches_for_its_newest_version() -> None:
    older, newer = make(seq=1), make(seq=3, description="newer")
    other = make(BOB, seq=7)
    assert vouched(older, [other, newer]) is newer  # a replay is replaced by the current
    assert vouched(newer, [older]) is newer  # the offer is newer than the answer
    assert vouched(older, [older]) is older
    assert vouched(older, [other]) is None  # the provider holds no such record
    assert vouched(older, []) is None
    assert vouched(make(seq=1, name="other"), [newer]) is None
