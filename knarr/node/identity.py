"""A node's Ed25519 identity: made on first start, kept in the node database.

``node_id`` is SHA-256 of the 32-byte public key, so a peer's id can always be checked
against the key that signed its messages.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import hmac
from collections.abc import Iterator

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


_STAND_IN: contextvars.ContextVar[dict[bytes, bytes] | None] = contextvars.ContextVar(
    "knarr_stand_in_signatures", default=None
)  # public key -> MAC key, while stand_in_signatures() is on in this context


@contextlib.contextmanager
def stand_in_signatures() -> Iterator[None]:
    """Inside the block (and in the tasks and callbacks it starts), sign with a keyed
    BLAKE2b MAC of the same 64 bytes instead of Ed25519. For the simulator only: no node
    uses it, and it is a context variable, so code outside the block, such as a node in
    another thread, signs with Ed25519 throughout.

    The simulator runs thousands of identities in one process and signs and verifies
    every datagram. Ed25519 costs about 19 µs to sign and 53 µs to verify; signing alone
    was 14 % of a 2,000-node simulation's CPU, spent on work that no simulated figure
    depends on. The stand-in keeps what the protocol relies on, within the simulation:

    * the MAC key is derived from the identity's secret seed, so no code that uses the
      node's API can make another identity's signatures (the keys are in this module's
      memory, so code that reaches into it could; the simulator's attackers do not);
    * :func:`verify` accepts exactly the (public key, message, signature) bytes that key
      signed; anything else (a forged, tampered, replayed-under-another-key or foreign
      signature) goes to Ed25519 verification, and fails there unless it is a real
      signature;
    * signatures are 64 bytes, so every datagram and record has its real size.

    A peer outside this process cannot verify a stand-in signature, which is why only
    :func:`knarr.sim.run.simulate` uses it (its ``real_signatures`` option shows that a
    run's figures are the same either way)."""
    token = _STAND_IN.set({})
    try:
        yield
    finally:
        _STAND_IN.reset(token)


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raise :class:`BadSignature` unless ``signature`` is ``public_key``'s over ``message``."""
    stand_in = _STAND_IN.get()
    if stand_in is not None:
        key = stand_in.get(public_key)
        if key is not None and hmac.compare_digest(signature, _mac(key, message)):
            return
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError) as exc:
        raise BadSignature("signature does not verify") from exc


def _mac(key: bytes, message: bytes) -> bytes:
    return hashlib.blake2b(message, key=key, digest_size=SIGNATURE_SIZE).digest()


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
        stand_in = _STAND_IN.get()
        if stand_in is not None:  # the simulator's (see stand_in_signatures())
            # Filed under the public key the secret key holds, not the public_key slot.
            public_key = self._secret[32:]
            key = stand_in.get(public_key)
            if key is None:
                key = stand_in[public_key] = hashlib.blake2b(
                    self._secret[:32], person=b"knarr-sim-mac"
                ).digest()
            return _mac(key, message)
        return nacl.bindings.crypto_sign(message, self._secret)[:SIGNATURE_SIZE]

    def __repr__(self) -> str:
        return f"Identity({self.node_id_hex[:16]}…)"
