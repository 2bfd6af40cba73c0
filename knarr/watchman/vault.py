"""``vault.db``: secrets sealed with a key that is never stored.

The key is derived from the operator's passphrase with Argon2id (``nacl.pwhash``); the
file keeps only the salt and cost parameters, so a copy of the data folder (or of a
backup) does not open the vault without the passphrase. Each secret is a
``nacl.secret.SecretBox`` ciphertext (XSalsa20-Poly1305, random nonce). Public values
that belong with a secret (a wallet's address) are kept in clear beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import apsw
import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from knarr.watchman.errors import VaultError

PASSPHRASE_ENV = "KNARR_VAULT_PASSPHRASE"
_CHECK = b"knarr-vault-v1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, box BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS public (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58(data: bytes) -> str:
    """Bitcoin-alphabet base58, the form of a Solana address."""
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, rem = divmod(number, 58)
        out = _B58[rem] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


class Vault:
    """An open vault; build it with :meth:`create` or :meth:`open`."""

    def __init__(self, db: apsw.Connection, key: bytes, path: Path) -> None:
        self._db = db
        self._box = nacl.secret.SecretBox(key)
        self.path = path

    @classmethod
    def create(
        cls,
        path: Path,
        passphrase: str,
        *,
        opslimit: int = nacl.pwhash.argon2id.OPSLIMIT_MODERATE,
        memlimit: int = nacl.pwhash.argon2id.MEMLIMIT_MODERATE,
    ) -> Vault:
        if path.exists():
            raise VaultError(f"{path} already exists; not overwriting a vault")
        if len(passphrase) < 8:
            raise VaultError("the vault passphrase must be at least 8 characters")
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        key = _derive(passphrase, salt, opslimit, memlimit)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        db = apsw.Connection(str(path))
        with db:
            db.execute(_SCHEMA)
            box = nacl.secret.SecretBox(key)
            for name, value in (("kdf", b"argon2id13"), ("salt", salt),
                                ("opslimit", str(opslimit).encode()),
                                ("memlimit", str(memlimit).encode()),
                                ("check", bytes(box.encrypt(_CHECK)))):
                db.execute("INSERT INTO meta(key, value) VALUES(?, ?)", (name, value))
        return cls(db, key, path)

    @classmethod
    def open(cls, path: Path, passphrase: str) -> Vault:
        if not path.is_file():
            raise VaultError(f"{path}: no vault here")
        try:
            db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
            meta = {str(k): bytes(v) for k, v in db.execute("SELECT key, value FROM meta")}
            key = _derive(passphrase, meta["salt"], int(meta["opslimit"]),
                          int(meta["memlimit"]))
            nacl.secret.SecretBox(key).decrypt(meta["check"])
        except nacl.exceptions.CryptoError:
            raise VaultError(f"{path}: wrong passphrase") from None
        except (apsw.Error, KeyError, ValueError) as exc:
            raise VaultError(f"{path}: not a knarr vault ({exc})") from None
        return cls(db, key, path)

    def put(self, name: str, secret: bytes) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO secrets(name, box) VALUES(?, ?)",
                             (name, bytes(self._box.encrypt(secret))))

    def get(self, name: str) -> bytes:
        rows = list(self._db.execute("SELECT box FROM secrets WHERE name = ?", (name,)))
        if not rows:
            raise VaultError(f"{self.path}: no secret named {name!r}")
        try:
            return bytes(self._box.decrypt(bytes(rows[0][0])))
        except nacl.exceptions.CryptoError:
            raise VaultError(f"{self.path}: secret {name!r} is corrupt") from None

    def set_public(self, name: str, value: str) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO public(name, value) VALUES(?, ?)",
                             (name, value))

    def close(self) -> None:
        self._db.close()


def read_public(path: Path, name: str) -> str | None:
    """A public value (e.g. the wallet address), readable without the passphrase."""
    if not path.is_file():
        return None
    db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = list(db.execute("SELECT value FROM public WHERE name = ?", (name,)))
    except apsw.Error:
        return None
    finally:
        db.close()
    return str(rows[0][0]) if rows else None


def _derive(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return bytes(nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, passphrase.encode("utf-8"), salt,
        opslimit=opslimit, memlimit=memlimit))
