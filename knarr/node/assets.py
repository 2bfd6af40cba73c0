"""Binary assets on disk, named only by their SHA-256, and what handlers see of them.

A file name is never derived from an untrusted string: every hash is checked to be 64
lowercase hex characters before it becomes a path, and files are written under a
temporary name and renamed into place only once their content hash is known (and matches
the hash they were sent under, if one was claimed).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from knarr.errors import KnarrError

ASSET_SCHEME = "knarr-asset://"
_HASH_RE = re.compile(r"[0-9a-f]{64}")
CHUNK = 256 * 1024


class AssetError(KnarrError):
    """An asset is missing, malformed, too large or does not match its hash."""


class AssetTooLarge(AssetError):
    """An upload exceeds ``max_asset_size``."""


class HashMismatch(AssetError):
    """The bytes received do not hash to the hash they were sent under."""


def valid_hash(value: str) -> bool:
    return isinstance(value, str) and _HASH_RE.fullmatch(value) is not None


def check_hash(value: str) -> str:
    if not valid_hash(value):
        raise AssetError(f"not an asset hash (64 lowercase hex characters): {value[:80]!r}")
    return value


def asset_uri(digest: str) -> str:
    return ASSET_SCHEME + check_hash(digest)


def parse_asset_uri(value: str) -> str:
    """The hash in a ``knarr-asset://<hash>`` URI; :class:`AssetError` if malformed."""
    return check_hash(value[len(ASSET_SCHEME) :])


def asset_refs(data: Mapping[str, Any]) -> dict[str, str]:
    """Top-level keys whose values are asset URIs, with their hashes (nested values are
    not walked). A malformed URI raises :class:`AssetError`."""
    return {
        key: parse_asset_uri(value)
        for key, value in data.items()
        if isinstance(value, str) and value.startswith(ASSET_SCHEME)
    }


class AssetStore:
    """Content-addressed files in one folder."""

    def __init__(self, directory: str | os.PathLike[str], *, max_size: int = 104_857_600) -> None:
        self.directory = Path(directory)
        self.max_size = max_size
        self.directory.mkdir(parents=True, exist_ok=True)
        self._tmp = self.directory / ".incoming"
        self._tmp.mkdir(exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.directory / check_hash(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise AssetError(f"no asset {digest}") from None

    def read(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise AssetError(f"no asset {digest}") from None

    def delete(self, digest: str) -> bool:
        try:
            self.path(digest).unlink()
            return True
        except FileNotFoundError:
            return False

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its hash."""
        if len(data) > self.max_size:
            raise AssetTooLarge(f"asset is {len(data)} bytes; the limit is {self.max_size}")
        writer = self.writer()
        writer.write(data)
        return writer.commit()

    def writer(self, expected: str | None = None) -> AssetWriter:
        """A streaming writer: ``write`` chunks, then ``commit`` (or ``abort``)."""
        if expected is not None:
            check_hash(expected)
        return AssetWriter(self, expected)


class AssetWriter:
    """Streams one upload to a temporary file, hashing and counting as it goes."""

    def __init__(self, store: AssetStore, expected: str | None) -> None:
        self._store = store
        self._expected = expected
        self._hash = hashlib.sha256()
        self.size = 0
        fd, name = tempfile.mkstemp(dir=store._tmp, prefix="up-")
        self._path = Path(name)
        self._file: IO[bytes] = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._store.max_size:
            self.abort()
            raise AssetTooLarge(f"asset exceeds the limit of {self._store.max_size} bytes")
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> str:
        """Verify the hash and move the file into place; returns the hash."""
        digest = self._hash.hexdigest()
        self._file.close()
        if self._expected is not None and digest != self._expected:
            self._path.unlink(missing_ok=True)
            raise HashMismatch(f"content hashes to {digest[:16]}…, not {self._expected[:16]}…")
        os.replace(self._path, self._store.path(digest))
        return digest

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._path.unlink(missing_ok=True)


class TaskContext:
    """What a handler that takes a second argument gets: access to the node's assets."""

    def __init__(self, store: AssetStore | None, *, skill: str = "", requester: str = "") -> None:
        self._store = store
        self.skill = skill
        self.requester = requester

    def _assets(self) -> AssetStore:
        if self._store is None:
            raise AssetError("this node has no sidecar; set [node] sidecar_port to use assets")
        return self._store

    def get_asset(self, digest: str) -> bytes:
        """The bytes of a local asset."""
        return self._assets().read(digest)

    def store_asset(self, data: bytes) -> str:
        """Keep ``data`` as an asset; returns its hash (use ``knarr-asset://<hash>``)."""
        return self._assets().put(bytes(data))

    def asset_path(self, digest: str) -> Path:
        """Where a local asset's file is."""
        return self._assets().path(digest)
