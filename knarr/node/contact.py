"""Who a peer is and where it listens, and the XOR metric between ids."""

from __future__ import annotations

import enum
import ipaddress
import socket
from dataclasses import dataclass, field
from functools import lru_cache

from knarr.errors import MistypedMessage
from knarr.node import cbor

ID_SIZE = 32
ID_BITS = ID_SIZE * 8


@dataclass(frozen=True, slots=True)
class Contact:
    """A peer's 32-byte node id and the UDP address it answers on."""

    node_id: bytes
    host: str
    port: int
    _encoded: cbor.Encoded = field(init=False, repr=False, compare=False)  # see encoded()

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def to_wire(self) -> list[object]:
        return [self.node_id, pack_ip(self.host), self.port]

    def encoded(self) -> cbor.Encoded:
        """The CBOR encoding of :meth:`to_wire`, made once: a contact goes out in many
        NODES replies."""
        try:
            return self._encoded
        except AttributeError:
            encoded = cbor.Encoded(cbor.encode(self.to_wire()))
            object.__setattr__(self, "_encoded", encoded)
            return encoded

    @classmethod
    def from_wire(cls, item: object) -> Contact:
        """Parse ``[node_id, ip, port]``; anything else is a :class:`MistypedMessage`."""
        if not isinstance(item, list) or len(item) != 3:
            raise MistypedMessage("contact must be [node_id, ip, port]")
        node_id, ip, port = item
        if not isinstance(node_id, bytes) or len(node_id) != ID_SIZE:
            raise MistypedMessage("contact node_id must be 32 bytes")
        if not isinstance(ip, bytes) or len(ip) not in (4, 16):
            raise MistypedMessage("contact ip must be 4 or 16 bytes")
        if type(port) is not int or not 0 < port < 65536:
            raise MistypedMessage("contact port must be 1..65535")
        return _from_wire(node_id, ip, port)

    def __repr__(self) -> str:
        return f"Contact({self.node_id.hex()[:12]}…@{self.host}:{self.port})"


@lru_cache(maxsize=16384)
def _from_wire(node_id: bytes, ip: bytes, port: int) -> Contact:
    """One shared :class:`Contact` per (id, address): contacts are immutable, and the
    same few recur in NODES reply after reply, so each is built (and encoded, see
    :meth:`Contact.encoded`) once. About 500 bytes an entry, so at most ~8 MB however
    many contacts peers name; more than a 10,000-node simulation needs."""
    return Contact(node_id, unpack_ip(ip), port)


def distance(a: bytes, b: bytes) -> int:
    """XOR distance between two ids, as an integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


@lru_cache(maxsize=65536)
def pack_ip(host: str) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.inet_pton(family, host)
    except OSError as exc:
        raise ValueError(f"not an IP address: {host!r}") from exc


@lru_cache(maxsize=65536)
def unpack_ip(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


@lru_cache(maxsize=65536)
def subnet_of(host: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) a host belongs to; ``None`` for loopback (exempt)."""
    ip = _unmapped(host)
    if ip.is_loopback:
        return None
    prefix = 24 if ip.version == 4 else 48
    host = str(ip)
    return str(ipaddress.ip_network(f"{host}/{prefix}", strict=False))


@lru_cache(maxsize=65536)
def is_loopback(host: str) -> bool:
    return _unmapped(host).is_loopback


class HostKind(enum.Enum):
    """What an address a peer names can be used for (see :func:`host_kind`)."""

    ROUTABLE = "routable"  # an IP literal to send to
    LOOPBACK = "loopback"  # this machine: usable only if a loopback peer names it
    UNUSABLE = "unusable"  # not an IP literal, or the unspecified address


@lru_cache(maxsize=65536)  # asked of every contact in every NODES reply
def host_kind(host: str) -> HostKind:
    """Classify ``host`` (IPv4-mapped IPv6 counts as the IPv4 it is), in one cached step.
    A scoped IPv6 address (``fe80::1%eth0``) names a link of ours, not a peer's address."""
    if "%" in host:
        return HostKind.UNUSABLE
    try:
        ip = _unmapped(host)
    except ValueError:
        return HostKind.UNUSABLE
    if ip.is_unspecified:
        return HostKind.UNUSABLE
    return HostKind.LOOPBACK if ip.is_loopback else HostKind.ROUTABLE


def is_this_host(host: str) -> bool:
    """Whether the IP literal ``host`` means the machine that uses it: a loopback or
    unspecified address (IPv4-mapped ones included). ``ValueError`` if not an IP."""
    ip = _unmapped(host)
    return ip.is_loopback or ip.is_unspecified


def _unmapped(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address, with IPv4-mapped IPv6 (``::ffff:a.b.c.d``) seen as the IPv4 it is."""
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
