"""A node's Ed25519 identity: made on first start, kept in the node database.

``node_id`` is SHA-256 of the 32-byte public key, so a peer's id can always be checked
against the key that signed its messages.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict

import nacl.bindings
import nacl.exceptions
import nacl.signing

from knarr.errors import BadSignature, StorageError
from knarr.node.store import Store

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
_META_KEY = "signing_key"


@functools.lru_cache(maxsize=16384)
def node_id_of(public_key: bytes) -> bytes:
    """The 32-byte node id that belongs to an Ed25519 public key. Cached: a served task
    asks for its requester's id about five times (sender, receipt, books, events), and
    every DHT envelope received asks for its sender's."""
    return hashlib.sha256(public_key).digest()


_made: OrderedDict[bytes, None] | None = None  # see remember_signatures()
_made_capacity = 0


def remember_signatures(capacity: int) -> None:
    """Remember the last ``capacity`` signatures this process makes, so that verifying one
    of them costs a dictionary lookup instead of an Ed25519 verification (0: stop).

    Exact, not a shortcut: a signature made with a key over a message verifies, and only
    the very (public key, message, signature) bytes we signed are skipped; any other
    bytes are verified as always. A node never needs it (it does not receive its own
    messages); the simulator, which runs thousands of identities in one process and
    verifies every datagram one of them signed, turns it on."""
    global _made, _made_capacity
    _made = OrderedDict() if capacity > 0 else None
    _made_capacity = capacity


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raise :class:`BadSignature` unless ``signature`` is ``public_key``'s over ``message``."""
    if _made is not None and public_key + message + signature in _made:
        return
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError) as exc:
        raise BadSignature("signature does not verify") from exc


class Identity:
    """An Ed25519 signing key with its derived node id."""

    __slots__ = ("_key", "_secret", "public_key", "node_id")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._key = signing_key
        # libsodium's 64-byte secret key (seed and public key), to sign through the
        # binding directly: SigningKey.sign also splits and wraps the signed message.
        self._secret: bytes = nacl.bindings.crypto_sign_seed_keypair(bytes(signing_key))[1]
        self.public_key: bytes = bytes(signing_key.verify_key)
        self.node_id: bytes = node_id_of(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """A deterministic identity, for tests and test vectors."""
        return cls(nacl.signing.SigningKey(seed))

    @classmethod
    def load_or_create(cls, store: Store) -> Identity:
        """The identity kept in ``store``, creating and saving one on first use."""
        seed = store.get_meta(_META_KEY)
        if seed is None:
            identity = cls.generate()
            with store.transaction():
                store.set_meta(_META_KEY, identity.seed)
            return identity
        if len(seed) != 32:
            raise StorageError(f"{store.path}: stored signing key is corrupt")
        return cls.from_seed(seed)

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    @property
    def signing_key(self) -> nacl.signing.SigningKey:
        return self._key

    @property
    def node_id_hex(self) -> str:
        return self.node_id.hex()

    def sign(self, message: bytes) -> bytes:
        """The detached 64-byte signature of ``message``."""
        signature = nacl.bindings.crypto_sign(message, self._secret)[:SIGNATURE_SIZE]
        if _made is not None:
            _made[self.public_key + message + signature] = None
            if len(_made) > _made_capacity:
                _made.popitem(last=False)
        return signature

    def __repr__(self) -> str:
        return f"Identity({self.node_id_hex[:16]}…)"
