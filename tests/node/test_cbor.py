"""Deterministic CBOR: RFC 8949 vectors, round-trips, and every rejection path."""

from __future__ import annotations

import enum
import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from knarr.errors import (
    LocalProtocolError,
    MalformedMessage,
    RemoteProtocolError,
    TruncatedMessage,
)
from knarr.node.cbor import Encoded, EncodeError, decode, encode

# RFC 8949 Appendix A, restricted to the types Knarr supports (preferred serialization).
APPENDIX_A: list[tuple[Any, str]] = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (0.0, "f90000"),
    (-0.0, "f98000"),
    (1.0, "f93c00"),
    (1.1, "fb3ff199999999999a"),
    (1.5, "f93e00"),
    (65504.0, "f97bff"),
    (100000.0, "fa47c35000"),
    (3.4028234663852886e38, "fa7f7fffff"),
    (1.0e300, "fb7e37e43c8800759c"),
    (5.960464477539063e-8, "f90001"),
    (0.00006103515625, "f90400"),
    (-4.0, "f9c400"),
    (-4.1, "fbc010666666666666"),
    (math.inf, "f97c00"),
    (math.nan, "f97e00"),
    (-math.inf, "f9fc00"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ('"\\', "62225c"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ("\U00010151", "64f0908591"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    (
        list(range(1, 26)),
        "98190102030405060708090a0b0c0d0e0f101112131415161718181819",
    ),
    ({}, "a0"),
    ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    (
        {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},
        "a56161614161626142616361436164614461656145",
    ),
]


def same(a: Any, b: Any) -> bool:
    """Equal with types and float bits compared exactly (so 1 != 1.0 != True, 0.0 != -0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.parametrize(("value", "hex_"), APPENDIX_A, ids=[h for _, h in APPENDIX_A])
def test_appendix_a_encode(value: Any, hex_: str) -> None:
    assert encode(value).hex() == hex_


@pytest.mark.parametrize(("value", "hex_"), APPENDIX_A, ids=[h for _, h in APPENDIX_A])
def test_appendix_a_decode(value: Any, hex_: str) -> None:
    assert same(decode(bytes.fromhex(hex_)), value)


def test_map_keys_sort_by_encoded_bytes() -> None:
    value = {"b": 1, "a": 2, "aa": 3, 10: 0, -1: 0}
    assert encode(value).hex() == "a5" + "0a00" + "2000" + "616102" + "616201" + "62616103"
    assert list(decode(encode(value))) == [10, -1, "a", "b", "aa"]


def test_tuple_encodes_as_array() -> None:
    assert encode((1, (2, 3))) == encode([1, [2, 3]])


def test_subclasses_encode_as_their_base_type() -> None:
    class Colour(enum.IntEnum):
        RED = 300

    class Tag(str):
        pass

    assert encode(Colour.RED) == encode(300)
    assert encode({Tag("k"): [Colour.RED]}) == encode({"k": [300]})


def test_length_heads_of_every_width() -> None:
    for n in (23, 24, 255, 256, 65535, 65536):
        blob = bytes(n)
        data = encode(blob)
        assert decode(data) == blob
        assert len(data) - n == {23: 1, 24: 2, 255: 2, 256: 3, 65535: 3, 65536: 5}[n]


@pytest.mark.parametrize("source", [bytearray, memoryview])
def test_decode_accepts_buffers_and_returns_bytes(source: Any) -> None:
    value = decode(source(encode([b"\x01\x02", {"k": b"v"}])))
    assert value == [b"\x01\x02", {"k": b"v"}]
    assert type(value[0]) is bytes
    assert type(value[1]["k"]) is bytes


# --- Round-trip properties -------------------------------------------------------------

ints = st.integers(min_value=-(2**64), max_value=2**64 - 1)
scalars = st.none() | st.booleans() | ints | st.floats() | st.binary() | st.text()
values = st.recursive(
    scalars,
    lambda children: st.lists(children) | st.dictionaries(ints | st.text(), children),
    max_leaves=40,
)


@given(values)
def test_round_trip(value: Any) -> None:
    data = encode(value)
    decoded = decode(data, max_depth=64, max_items=100_000)
    assert same(decoded, value)
    assert encode(decoded) == data


@given(st.floats(allow_nan=False))
def test_float_round_trip_is_bit_exact(value: float) -> None:
    assert same(decode(encode(value)), value)


@given(st.floats(width=16))
def test_half_precision_values_take_three_bytes(value: float) -> None:
    assert len(encode(value)) == 3


@given(st.floats(width=32))
def test_single_precision_values_take_at_most_five_bytes(value: float) -> None:
    assert len(encode(value)) <= 5


@given(st.floats(allow_nan=False))
def test_float_width_is_the_shortest_exact(value: float) -> None:
    width = len(encode(value)) - 1
    narrower = {2: None, 4: ">e", 8: ">f"}[width]
    if narrower is not None:
        assert not _fits(narrower, value)


@given(st.binary(max_size=64))
def test_any_accepted_input_is_the_canonical_encoding(data: bytes) -> None:
    try:
        value = decode(data)
    except RemoteProtocolError:
        return
    assert encode(value) == data


@given(values, st.data())
def test_mutated_encodings_decode_canonically_or_raise(value: Any, data: st.DataObject) -> None:
    encoded = bytearray(encode(value))
    if not encoded:
        return
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    mutated = bytes(encoded[:cut])
    try:
        decoded = decode(mutated, max_depth=64, max_items=100_000)
    except RemoteProtocolError:
        return
    assert encode(decoded) == mutated


def _fits(fmt: str, value: float) -> bool:
    try:
        return bool(struct.unpack(fmt, struct.pack(fmt, value))[0] == value)
    except OverflowError:
        return False


# --- Encoding errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        2**64,
        -(2**64) - 1,
        {1, 2},
        object(),
        1j,
        bytearray(b"x"),
        "\ud800",
        {b"k": 1},
        {1.5: 1},
        {None: 1},
        {True: 1},
        {(1, 2): 1},
        [1, {"x": [2**64]}],
    ],
    ids=repr,
)
def test_unsupported_values_raise_encode_error(value: object) -> None:
    with pytest.raises(EncodeError):
        encode(value)


def test_encode_error_is_a_local_protocol_error() -> None:
    assert issubclass(EncodeError, LocalProtocolError)


def test_self_containing_value_raises_encode_error() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(EncodeError):
        encode(cycle)


# --- Decoding errors -------------------------------------------------------------------

TRUNCATED = [
    "",
    "18",
    "1901",
    "1a000100",
    "1b00000001000000",
    "6261",
    "4301",
    "8201",
    "a16161",
    "a1",
    "f900",
    "fa000000",
    "fb00000000000000",
    "5b8000000000000000",  # claims a 2**63-byte string in 9 bytes
    "7b8000000000000000",
    "5bffffffffffffffff",
]

MALFORMED = [
    # non-shortest heads
    "1817",
    "190017",
    "1900ff",
    "1a0000ffff",
    "1b00000000ffffffff",
    "3817",
    "580100",
    "780161",
    "9800",
    "b800",
    # non-shortest floats (including Appendix A's non-preferred forms)
    "fa3f800000",
    "fb3ff0000000000000",
    "fb40f86a0000000000",  # 100000.0 fits in single
    "fa7f800000",  # inf
    "fb7ff0000000000000",  # inf
    "fa7fc00000",  # NaN
    "fb7ff8000000000000",  # NaN
    "f97e01",  # NaN with a payload
    "f9fe00",  # negative NaN
    "fa00000000",  # 0.0
    "fb8000000000000000",  # -0.0
    # map keys
    "a2616101616102",  # duplicate
    "a2616201616102",  # unsorted
    "a262616101616202",  # "aa" before "b"
    "a220000100",  # -1 before 1
    "a14000",  # byte-string key
    "a1f600",  # null key
    "a1f500",  # bool key
    "a18000",  # array key
    "a1f93c0000",  # float key
    # indefinite lengths and break
    "5f4101ff",
    "7f6161ff",
    "9f01ff",
    "bf616101ff",
    "ff",
    # reserved additional information 28-30
    "1c",
    "3d",
    "5e",
    "7c",
    "9d",
    "be",
    "dc",
    "fc",
    "fd",
    "fe",
    # tags, undefined, other simple values
    "c074323031332d30332d32315432303a30343a30305a",
    "c249010000000000000000",
    "d8184100",
    "f7",
    "e0",
    "f0",
    "f820",
    "f8ff",
    # invalid UTF-8
    "62c328",
    "61ff",
    "63eda080",  # encoded surrogate
    "62c0af",  # overlong
    # trailing bytes
    "0000",
    "80f6",
    "a0a0",
]


@pytest.mark.parametrize("hex_", TRUNCATED)
def test_truncated_input(hex_: str) -> None:
    with pytest.raises(TruncatedMessage):
        decode(bytes.fromhex(hex_))


@pytest.mark.parametrize("hex_", MALFORMED)
def test_malformed_input(hex_: str) -> None:
    with pytest.raises(MalformedMessage):
        decode(bytes.fromhex(hex_))


def test_huge_array_claim_is_rejected_before_allocation() -> None:
    with pytest.raises(MalformedMessage):
        decode(bytes.fromhex("9b8000000000000000"))
    with pytest.raises(TruncatedMessage):
        decode(bytes.fromhex("9b8000000000000000"), max_items=2**64)
    with pytest.raises(TruncatedMessage):
        decode(bytes.fromhex("bb4000000000000000"), max_items=2**64)


def test_max_depth() -> None:
    assert decode(b"\x81" * 16 + b"\x00") == _nested(16)
    with pytest.raises(MalformedMessage):
        decode(b"\x81" * 17 + b"\x00")
    with pytest.raises(MalformedMessage):
        decode(b"\xa1\x00" * 3 + b"\x80", max_depth=3)
    assert decode(b"\x80", max_depth=1) == []
    with pytest.raises(MalformedMessage):
        decode(b"\x80", max_depth=0)


def test_deep_nesting_never_leaks_recursion_error() -> None:
    with pytest.raises(MalformedMessage):
        decode(b"\x81" * 200_000 + b"\x00", max_depth=10**9, max_items=10**9)


def test_max_items_counts_across_the_whole_input() -> None:
    eight_items = encode([[0, 0], {1: 2, 3: 4}, [5]])  # 3 + 2 + 2 pairs + 1 = 8 items
    assert decode(eight_items, max_items=8) == [[0, 0], {1: 2, 3: 4}, [5]]
    with pytest.raises(MalformedMessage):
        decode(eight_items, max_items=7)
    with pytest.raises(MalformedMessage):
        decode(encode(list(range(4097))))
    assert decode(encode(list(range(4096)))) == list(range(4096))


def test_typical_message_round_trips() -> None:
    message = {"re": bytes(16), "nodes": [[bytes(32), bytes(4), 9000]] * 20}
    assert decode(encode(message)) == message


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_encoded_bytes_are_spliced_in_as_they_are() -> None:
    inner = Encoded(encode([b"\x01" * 32, b"\x7f\0\0\x01", 4000]))
    assert encode({"nodes": [inner, inner]}) == encode(
        {"nodes": [[b"\x01" * 32, b"\x7f\0\0\x01", 4000]] * 2}
    )
    assert encode(Encoded(encode(b"plain"))) == encode(b"plain")
