"""RFC 8949 deterministic CBOR: the single canonical encoding of Knarr values.

Signatures are made over bytes, so every value must have exactly one encoding for a
signature over the bytes to also be a signature over the value. ``encode`` therefore
follows core deterministic encoding (RFC 8949 §4.2.1): shortest argument heads, definite
lengths only, map keys sorted by the bytewise order of their encodings, and floats in the
shortest of half/single/double precision that holds them exactly (§4.2.2, NaN as
``f97e00``). ``decode`` is strict: any other encoding of a value is rejected, so a peer
cannot slip an alternative form of a signed message past us.

Supported subset (Python ↔ CBOR):

- ``None``, ``False``, ``True`` ↔ simple values 22, 20, 21
- ``int`` in ``-2**64 .. 2**64 - 1`` ↔ major types 0 and 1 (no bignum tags)
- ``float`` ↔ major type 7, half/single/double precision
- ``bytes`` ↔ byte string; ``str`` ↔ UTF-8 text string
- ``list`` (and ``tuple`` when encoding) ↔ array
- ``dict`` with ``int`` or ``str`` keys ↔ map

Tags, ``undefined``, other simple values and indefinite lengths are rejected.
"""

from __future__ import annotations

import math
import struct
from operator import itemgetter
from typing import Any

from knarr.errors import LocalProtocolError, MalformedMessage, TruncatedMessage

__all__ = ["EncodeError", "Encoded", "decode", "encode"]


class EncodeError(LocalProtocolError):
    """A value has a type or range that Knarr's CBOR subset cannot encode."""


class Encoded(bytes):
    """Bytes that already are the deterministic encoding of one value: :func:`encode`
    puts them in as they are. For parts of messages that recur unchanged (a contact in
    NODES replies), so that they are encoded once, not once per message."""


_UINT64_MAX = 2**64 - 1

_PACK_U16 = struct.Struct(">BH").pack
_PACK_U32 = struct.Struct(">BI").pack
_PACK_U64 = struct.Struct(">BQ").pack

_HALF = struct.Struct(">Be")
_SINGLE = struct.Struct(">Bf")
_DOUBLE = struct.Struct(">Bd")
_HALF_MAX = 65504.0
_SINGLE_MAX = 3.4028234663852886e38
_NAN = b"\xf9\x7e\x00"

# _HEADS[major][n] is the head of major type ``major`` with argument ``n`` < 256.
_HEADS: tuple[tuple[bytes, ...], ...] = tuple(
    tuple(bytes((major << 5 | n,)) if n < 24 else bytes((major << 5 | 24, n)) for n in range(256))
    for major in range(6)
)

# Indexed by additional information 25..27: bytes of argument, and the smallest argument
# that needs that many (anything smaller has a shorter head).
_ARG_SIZE = (0,) * 25 + (2, 4, 8)
_MIN_ARG = (0,) * 25 + (0x100, 0x10000, 0x100000000)

_FLOAT_FORMATS = {0xF9: _HALF, 0xFA: _SINGLE, 0xFB: _DOUBLE}

_first = itemgetter(0)


def encode(value: object) -> bytes:
    """Return the deterministic CBOR encoding of ``value``.

    Raises EncodeError for unsupported types, non-str/int map keys, integers outside
    ``-2**64 .. 2**64 - 1``, strings that are not encodable as UTF-8, and self-containing
    or absurdly deep values.
    """
    out = bytearray()
    try:
        _encode_into(value, out)
    except RecursionError as exc:
        raise EncodeError("value nests too deeply to encode (does it contain itself?)") from exc
    return bytes(out)


def _head(major: int, arg: int) -> bytes:
    if arg < 0x100:
        return _HEADS[major][arg]
    bits = major << 5
    if arg < 0x10000:
        return _PACK_U16(bits | 25, arg)
    if arg < 0x100000000:
        return _PACK_U32(bits | 26, arg)
    return _PACK_U64(bits | 27, arg)


def _encode_int(value: int) -> bytes:
    if value >= 0:
        if value > _UINT64_MAX:
            raise EncodeError(f"integer {value} is above 2**64 - 1, the largest CBOR can carry")
        return _head(0, value)
    if value < -_UINT64_MAX - 1:
        raise EncodeError(f"integer {value} is below -2**64, the smallest CBOR can carry")
    return _head(1, -1 - value)


def _encode_str(value: str) -> bytes:
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"string is not valid Unicode (lone surrogate?): {value!r}") from exc
    return _head(3, len(raw)) + raw


def _encode_float(value: float) -> bytes:
    if value != value:
        return _NAN
    magnitude = abs(value)
    if magnitude <= _HALF_MAX or magnitude == math.inf:
        packed = _HALF.pack(0xF9, value)
        if _HALF.unpack(packed)[1] == value:
            return packed
    if magnitude <= _SINGLE_MAX:
        packed = _SINGLE.pack(0xFA, value)
        if _SINGLE.unpack(packed)[1] == value:
            return packed
    return _DOUBLE.pack(0xFB, value)


_KEY_CACHE: dict[str, bytes] = {}
"""Encoded short text keys: messages, receipts and records reuse a few dozen names."""
_KEY_CACHE_LIMIT = 1024


def _encode_key(key: object) -> bytes:
    if type(key) is str:
        cached = _KEY_CACHE.get(key)
        if cached is None:
            cached = _encode_str(key)
            if len(cached) <= 24 and len(_KEY_CACHE) < _KEY_CACHE_LIMIT:
                _KEY_CACHE[key] = cached
        return cached
    if isinstance(key, str):
        return _encode_str(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return _encode_int(key)
    raise EncodeError(f"map keys must be int or str, not {type(key).__name__}")


def _encode_into(value: object, out: bytearray) -> None:
    # Exact types first (the fast path); subclasses such as IntEnum fall through to isinstance.
    if type(value) is bytes:
        n = len(value)
        out += _HEADS[2][n] if n < 0x100 else _head(2, n)
        out += value
    elif type(value) is list or type(value) is tuple:
        n = len(value)
        out += _HEADS[4][n] if n < 0x100 else _head(4, n)
        for item in value:
            _encode_into(item, out)
    elif type(value) is int:
        out += _HEADS[0][value] if 0 <= value < 0x100 else _encode_int(value)
    elif type(value) is str:
        out += _encode_str(value)
    elif type(value) is dict:
        n = len(value)
        out += _HEADS[5][n] if n < 0x100 else _head(5, n)
        pairs = sorted([(_encode_key(k), v) for k, v in value.items()], key=_first)
        previous = b""
        for key, item in pairs:
            if key == previous:
                raise EncodeError(f"two map keys encode to the same bytes {key.hex()}")
            previous = key
            out += key
            _encode_into(item, out)
    elif type(value) is Encoded:
        out += value
    elif value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif isinstance(value, float):
        out += _encode_float(value)
    elif isinstance(value, bytes):
        out += _head(2, len(value))
        out += value
    elif isinstance(value, int):
        out += _encode_int(value)
    elif isinstance(value, str):
        out += _encode_str(value)
    elif isinstance(value, (list, tuple)):
        _encode_into(list(value), out)
    elif isinstance(value, dict):
        _encode_into(dict(value), out)
    else:
        raise EncodeError(
            f"cannot encode {type(value).__name__} as CBOR; supported: None, bool, int, "
            "float, bytes, str, list, tuple, dict"
        )


def decode(
    data: bytes | bytearray | memoryview, *, max_depth: int = 16, max_items: int = 4096
) -> Any:
    """Decode the one deterministic CBOR item that spans all of ``data``.

    ``max_depth`` bounds container nesting and ``max_items`` the total of array elements
    plus map pairs in the whole input, so hostile input costs bounded time and memory.
    Raises TruncatedMessage if ``data`` ends early and MalformedMessage for trailing bytes,
    any non-canonical or unsupported encoding, or a limit being exceeded.
    """
    buf = data if type(data) is bytes else bytes(data)
    if not buf:
        raise TruncatedMessage("empty input where a CBOR item was expected")
    budget = [max_items]
    try:
        value, end = _decode_item(buf, 0, max_depth, budget)
    except IndexError as exc:
        # Reading a head byte past the end is the only way to index out of range here.
        raise TruncatedMessage("CBOR input ends in the middle of an item") from exc
    except RecursionError as exc:
        raise MalformedMessage("CBOR input nests too deeply to decode") from exc
    if end != len(buf):
        raise MalformedMessage(f"{len(buf) - end} trailing bytes after the CBOR item")
    return value


def _decode_item(data: bytes, pos: int, depth: int, budget: list[int]) -> tuple[Any, int]:
    initial = data[pos]
    pos += 1
    if initial >= 0xE0:
        return _decode_simple(data, pos, initial)
    major = initial >> 5
    info = initial & 0x1F
    if info < 24:
        arg = info
    elif info == 24:
        arg = data[pos]
        pos += 1
        if arg < 24:
            raise MalformedMessage(f"non-shortest head 0x{initial:02x} for argument {arg}")
    elif info < 28:
        end = pos + _ARG_SIZE[info]
        if end > len(data):
            raise TruncatedMessage("CBOR input ends inside an item head")
        arg = int.from_bytes(data[pos:end], "big")
        pos = end
        if arg < _MIN_ARG[info]:
            raise MalformedMessage(f"non-shortest head 0x{initial:02x} for argument {arg}")
    elif info == 31:
        raise MalformedMessage("indefinite-length CBOR items are not allowed")
    else:
        raise MalformedMessage(f"reserved additional information {info} in head 0x{initial:02x}")

    if major == 2:
        end = pos + arg
        if end > len(data):
            raise TruncatedMessage(f"byte string claims {arg} bytes but {len(data) - pos} remain")
        return data[pos:end], end
    if major == 0:
        return arg, pos
    if major == 4:
        if depth <= 0:
            raise MalformedMessage("CBOR containers nest deeper than allowed")
        budget[0] -= arg
        if budget[0] < 0:
            raise MalformedMessage("CBOR input has more array elements and map pairs than allowed")
        if arg > len(data) - pos:
            raise TruncatedMessage(f"array claims {arg} items but {len(data) - pos} bytes remain")
        depth -= 1
        items: list[Any] = []
        append = items.append
        for _ in range(arg):
            item, pos = _decode_item(data, pos, depth, budget)
            append(item)
        return items, pos
    if major == 3:
        end = pos + arg
        if end > len(data):
            raise TruncatedMessage(f"text string claims {arg} bytes but {len(data) - pos} remain")
        try:
            return data[pos:end].decode("utf-8"), end
        except UnicodeDecodeError as exc:
            raise MalformedMessage(f"text string is not valid UTF-8: {exc.reason}") from exc
    if major == 5:
        if depth <= 0:
            raise MalformedMessage("CBOR containers nest deeper than allowed")
        budget[0] -= arg
        if budget[0] < 0:
            raise MalformedMessage("CBOR input has more array elements and map pairs than allowed")
        if 2 * arg > len(data) - pos:
            raise TruncatedMessage(f"map claims {arg} pairs but {len(data) - pos} bytes remain")
        depth -= 1
        result: dict[Any, Any] = {}
        previous = b""
        for _ in range(arg):
            start = pos
            key_initial = data[pos]
            if key_initial >= 0x80 or 0x40 <= key_initial < 0x60:
                raise MalformedMessage("map keys must be integers or text strings")
            key, pos = _decode_item(data, pos, depth, budget)
            raw_key = data[start:pos]
            if raw_key <= previous:
                problem = "duplicate" if raw_key == previous else "out-of-order"
                raise MalformedMessage(f"{problem} map key {key!r:.40}")
            previous = raw_key
            result[key], pos = _decode_item(data, pos, depth, budget)
        return result, pos
    if major == 1:
        return -1 - arg, pos
    raise MalformedMessage(f"CBOR tag {arg} is not supported")


def _decode_simple(data: bytes, pos: int, initial: int) -> tuple[Any, int]:
    if initial == 0xF6:
        return None, pos
    if initial == 0xF5:
        return True, pos
    if initial == 0xF4:
        return False, pos
    fmt = _FLOAT_FORMATS.get(initial)
    if fmt is not None:
        end = pos - 1 + fmt.size
        if end > len(data):
            raise TruncatedMessage("CBOR input ends inside a float")
        raw = data[pos - 1 : end]
        value: float = fmt.unpack(raw)[1]
        if _encode_float(value) != raw:
            raise MalformedMessage(f"float {value!r} is not in its shortest exact form")
        return value, end
    if initial == 0xFF:
        raise MalformedMessage("CBOR break code outside an indefinite-length item")
    if initial == 0xF7:
        raise MalformedMessage("CBOR undefined is not supported")
    if 0xFC <= initial <= 0xFE:
        raise MalformedMessage(f"reserved additional information in head 0x{initial:02x}")
    raise MalformedMessage(f"CBOR simple value in head 0x{initial:02x} is not supported")
