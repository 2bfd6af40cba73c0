"""The HTTP asset sidecar (aiohttp): server and client, with signed requests.

Every request carries ``X-Knarr-PublicKey``, ``X-Knarr-Timestamp`` (ms),
``X-Knarr-Content-Hash`` (SHA-256 of the body, hex; of the empty body for GET, HEAD and
DELETE; or, for PUT only, ``UNSIGNED-PAYLOAD``) and ``X-Knarr-Signature``: Ed25519 over
``"knarr-sidecar/1\\n" METHOD "\\n" PATH "\\n" TIMESTAMP "\\n" CONTENT_HASH``.
The server checks the timestamp window and refuses a signature it has already seen.
Bodies stream to and from disk, so memory stays flat for any size.

``UNSIGNED-PAYLOAD`` lets a client upload a file without reading it twice (once to hash it
for the header, once to send it): the sidecar names the file by the hash of what arrived and
answers it, and the client compares that with the hash it computed while sending.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import nacl.signing
from aiohttp import web

from knarr.errors import NetworkError, RemoteProtocolError
from knarr.node import wire
from knarr.node.assets import (
    CHUNK,
    AssetError,
    AssetStore,
    AssetTooLarge,
    AssetWriter,
    HashMismatch,
    check_hash,
    valid_hash,
)
from knarr.node.identity import Identity, verify

EMPTY_HASH = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
"""``X-Knarr-Content-Hash`` of a PUT whose body the sidecar hashes as it arrives."""
Progress = Callable[[int, int], None]


def signed_message(method: str, path: str, timestamp: str, content_hash: str) -> bytes:
    return f"knarr-sidecar/1\n{method}\n{path}\n{timestamp}\n{content_hash}".encode()


def _identity(key: Identity | nacl.signing.SigningKey) -> Identity:
    return key if isinstance(key, Identity) else Identity(key)


_last_ms = 0


def sign_headers(
    key: Identity | nacl.signing.SigningKey, method: str, path: str, content_hash: str,
    *, now: float | None = None,
) -> dict[str, str]:
    global _last_ms
    identity = _identity(key)
    ms = int((time.time() if now is None else now) * 1000)
    if now is None:
        # Ed25519 is deterministic and the server keys replays on the signature: two
        # identical requests must not share a timestamp.
        ms = _last_ms = max(ms, _last_ms + 1)
    timestamp = str(ms)
    signature = identity.sign(signed_message(method, path, timestamp, content_hash))
    return {
        "X-Knarr-PublicKey": identity.public_key.hex(),
        "X-Knarr-Timestamp": timestamp,
        "X-Knarr-Content-Hash": content_hash,
        "X-Knarr-Signature": signature.hex(),
    }


def _fail(status: type[web.HTTPException], message: str, **kwargs: Any) -> web.HTTPException:
    return status(text=json.dumps({"error": message}), content_type="application/json",
                  **kwargs)


class Sidecar:
    """Serves one node's asset folder."""

    def __init__(
        self,
        identity: Identity,
        store: AssetStore,
        *,
        clock: Callable[[], float] = time.time,
        window_s: float = 60.0,
    ) -> None:
        self.identity = identity
        self.store = store
        self.clock = clock
        self.replay = wire.ReplayGuard(int(window_s * 1000))
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024)
        app.router.add_put("/assets", self._put)
        app.router.add_get("/assets/{digest}", self._get, allow_head=False)
        app.router.add_route("HEAD", "/assets/{digest}", self._head)
        app.router.add_delete("/assets/{digest}", self._delete)
        return app

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _authenticate(self, request: web.Request, content_hash: str | None = None) -> bytes:
        h = request.headers
        try:
            public_key = bytes.fromhex(h["X-Knarr-PublicKey"])
            signature = bytes.fromhex(h["X-Knarr-Signature"])
            timestamp = h["X-Knarr-Timestamp"]
            claimed = h["X-Knarr-Content-Hash"]
            ts = int(timestamp)
        except (KeyError, ValueError):
            raise _fail(web.HTTPUnauthorized, "missing or malformed X-Knarr-* headers") from None
        unsigned_put = request.method == "PUT" and claimed == UNSIGNED_PAYLOAD
        if len(public_key) != 32 or len(signature) != 64 or not (
            valid_hash(claimed) or unsigned_put
        ):
            raise _fail(web.HTTPUnauthorized, "malformed X-Knarr-* headers")
        if content_hash is not None and claimed != content_hash:
            raise _fail(web.HTTPUnauthorized, "X-Knarr-Content-Hash does not match the body")
        now_ms = int(self.clock() * 1000)
        if abs(now_ms - ts) > self.replay.window_ms:
            raise _fail(web.HTTPUnauthorized, "stale or future X-Knarr-Timestamp")
        try:
            self.replay.check(public_key, signature, ts)
            verify(public_key, signed_message(request.method, request.path, timestamp, claimed),
                   signature)
        except RemoteProtocolError as exc:
            raise _fail(web.HTTPUnauthorized, str(exc)) from None
        self.replay.remember(public_key, signature, ts, now_ms)
        return public_key

    def _digest(self, request: web.Request) -> str:
        digest = request.match_info["digest"]
        if not valid_hash(digest):
            raise _fail(web.HTTPBadRequest, "asset names are 64 lowercase hex characters")
        return digest

    async def _put(self, request: web.Request) -> web.Response:
        self._authenticate(request)
        claimed = request.headers["X-Knarr-Content-Hash"]
        length = request.content_length
        if length is not None and length > self.store.max_size:
            raise _fail(web.HTTPRequestEntityTooLarge,
                        f"asset is {length} bytes; the limit is {self.store.max_size}",
                        max_size=self.store.max_size, actual_size=length)
        writer = self.store.writer(expected=None if claimed == UNSIGNED_PAYLOAD else claimed)
        try:
            digest = await _receive(request.content, writer)
        except AssetTooLarge as exc:
            raise _fail(web.HTTPRequestEntityTooLarge, str(exc), max_size=self.store.max_size,
                        actual_size=writer.size) from None
        except HashMismatch as exc:
            raise _fail(web.HTTPBadRequest, str(exc)) from None
        return web.json_response({"hash": digest, "size": writer.size})

    async def _get(self, request: web.Request) -> web.StreamResponse:
        self._authenticate(request, EMPTY_HASH)
        digest = self._digest(request)
        path = self.store.path(digest)
        if not path.is_file():
            raise _fail(web.HTTPNotFound, "no such asset")
        return web.FileResponse(path, chunk_size=CHUNK)

    async def _head(self, request: web.Request) -> web.Response:
        self._authenticate(request, EMPTY_HASH)
        digest = self._digest(request)
        try:
            size = self.store.size(digest)
        except AssetError:
            raise web.HTTPNotFound() from None
        return web.Response(headers={"Content-Length": str(size)})

    async def _delete(self, request: web.Request) -> web.Response:
        public_key = self._authenticate(request, EMPTY_HASH)
        digest = self._digest(request)
        if public_key != self.identity.public_key:
            raise _fail(web.HTTPForbidden, "only the node itself may delete assets")
        if not self.store.delete(digest):
            raise _fail(web.HTTPNotFound, "no such asset")
        return web.json_response({"deleted": digest})


async def _receive(
    body: aiohttp.StreamReader, writer: AssetWriter, progress: Callable[[int], None] | None = None,
) -> str:
    """Stream ``body`` through ``writer`` (hashed and written as it arrives) and commit it;
    on any failure nothing is left on disk."""
    try:
        async for chunk in body.iter_chunked(CHUNK):
            writer.write(chunk)
            if progress is not None:
                progress(writer.size)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


# ---------------------------------------------------------------------------- client


class SidecarError(NetworkError):
    """A sidecar refused a request or could not be reached; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _url(host: str, port: int, path: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}"


async def _raise_for(response: aiohttp.ClientResponse, what: str) -> None:
    if response.status < 400:
        return
    try:
        detail = (await response.json(content_type=None)).get("error", "")
    except (ValueError, aiohttp.ClientError, AttributeError):
        detail = ""
    raise SidecarError(f"{what}: HTTP {response.status} {detail}".strip(), response.status)


class HashBehind:
    """SHA-256 of a stream of chunks, hashed on a worker thread one batch behind: while
    the thread hashes a batch, the loop receives and writes the next, so a machine with
    a core to spare does both at once (hashlib releases the GIL on large updates). At
    most two batches are held, so memory stays flat for any size.

    Measured on a quiet 2-core machine, 100 MiB downloads went from 0.46-0.59 to
    0.58-0.81 of the floor with it. It costs ~20 % more CPU, so where the client and the
    server share one core's worth, it is a few per cent slower (docs/performance.md)."""

    BATCH = 4 * CHUNK

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._batch: list[bytes] = []
        self._size = 0
        self._pending: asyncio.Future[None] | None = None

    async def update(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._size += len(chunk)
        if self._size >= self.BATCH:
            await self._settle()
            batch, self._batch, self._size = self._batch, [], 0
            self._pending = asyncio.get_running_loop().run_in_executor(None, self._hash, batch)

    async def hexdigest(self) -> str:
        await self._settle()
        self._hash(self._batch)
        self._batch, self._size = [], 0
        return self._sha.hexdigest()

    async def _settle(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending

    def _hash(self, parts: list[bytes]) -> None:
        for part in parts:
            self._sha.update(part)


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


async def _hashed_chunks(
    file: BinaryIO, hash_update: Callable[[bytes], None], total: int, progress: Progress | None
) -> AsyncIterator[bytes]:
    """The file's chunks, each passed to ``hash_update`` as it is read.

    On the loop, not on a worker thread as downloads do (:class:`HashBehind`): an upload
    keeps both cores busy (the sidecar hashes too), so a thread only adds its cost
    (cross-core copies, GIL hand-overs); measured slower here."""
    sent = 0
    while chunk := file.read(CHUNK):
        hash_update(chunk)
        sent += len(chunk)
        if progress is not None:
            progress(sent, total)
        yield chunk


async def upload_file(
    host: str, port: int, path: str | os.PathLike[str], key: Identity | nacl.signing.SigningKey,
    *, progress: Progress | None = None, timeout: float | None = None,
) -> tuple[str, int]:
    """Stream a file to a sidecar; returns ``(hash, size)``.

    The file is read once: it goes up as ``UNSIGNED-PAYLOAD`` while being hashed, and the
    hash the sidecar answers must be the one computed here (which is what a task will
    name, so a body changed on the way is caught here). A sidecar that refuses the
    unsigned form (401) is asked again with the hash signed, as before it existed."""
    file = Path(path)
    try:
        return await _upload_file(host, port, file, key, UNSIGNED_PAYLOAD, progress, timeout)
    except SidecarError as exc:
        if exc.status != 401:
            raise
    digest = await asyncio.to_thread(file_hash, file)  # hashing 1 GiB must not block a node
    return await _upload_file(host, port, file, key, digest, progress, timeout)


async def _upload_file(
    host: str, port: int, file: Path, key: Identity | nacl.signing.SigningKey,
    content_hash: str, progress: Progress | None, timeout: float | None,
) -> tuple[str, int]:
    hasher = hashlib.sha256()
    headers = sign_headers(key, "PUT", "/assets", content_hash)
    try:
        with file.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            headers["Content-Length"] = str(size)
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout)
            ) as s, s.put(
                _url(host, port, "/assets"), data=_hashed_chunks(f, hasher.update, size, progress),
                headers=headers,
            ) as response:
                await _raise_for(response, f"upload of {file.name} refused")
                body = await response.json()
    except aiohttp.ClientError as exc:
        raise SidecarError(f"cannot upload to {host}:{port}: {exc}") from exc
    digest = hasher.hexdigest()
    if body.get("hash") != digest or body.get("size") != size:
        raise SidecarError(
            f"the sidecar stored the upload of {file.name} under a different hash or size "
            "than were sent (the bytes changed on the way, or the file while it was read)"
        )
    return digest, size


async def upload_asset(
    host: str, port: int, data: bytes, signing_key: Identity | nacl.signing.SigningKey
) -> str:
    """Upload ``data`` to a sidecar; returns its hash."""
    digest = hashlib.sha256(data).hexdigest()
    headers = sign_headers(signing_key, "PUT", "/assets", digest)
    try:
        async with aiohttp.ClientSession() as s, s.put(
            _url(host, port, "/assets"), data=io.BytesIO(data), headers=headers
        ) as response:
            await _raise_for(response, "upload refused")
            body = await response.json()
    except aiohttp.ClientError as exc:
        raise SidecarError(f"cannot upload to {host}:{port}: {exc}") from exc
    if body.get("hash") != digest:
        raise SidecarError("the sidecar stored the upload under a different hash")
    return digest


async def download_to(
    host: str, port: int, digest: str, key: Identity | nacl.signing.SigningKey,
    store: AssetStore, *, progress: Progress | None = None, timeout: float | None = None,
) -> Path:
    """Stream an asset into ``store`` (verifying its hash); returns its path."""
    check_hash(digest)
    path = f"/assets/{digest}"
    writer = store.writer(expected=digest)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.get(
                _url(host, port, path), headers=sign_headers(key, "GET", path, EMPTY_HASH)
            ) as response:
                await _raise_for(response, f"download of {digest[:16]}… refused")
                total = response.content_length or 0
                await _receive(response.content, writer, None if progress is None else (
                    lambda received: progress(received, total)
                ))
    except aiohttp.ClientError as exc:
        writer.abort()
        raise SidecarError(f"cannot download from {host}:{port}: {exc}") from exc
    except BaseException:
        writer.abort()
        raise
    return store.path(digest)


async def download_file(
    host: str, port: int, digest: str, key: Identity | nacl.signing.SigningKey,
    dest: Path, *, progress: Progress | None = None, timeout: float | None = None,
) -> Path:
    """Stream an asset to ``dest`` (via ``dest.part``), verifying its hash first."""
    check_hash(digest)
    path = f"/assets/{digest}"
    partial = dest.with_name(dest.name + ".part")
    hasher = HashBehind()
    received = 0
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.get(
                _url(host, port, path), headers=sign_headers(key, "GET", path, EMPTY_HASH)
            ) as response:
                await _raise_for(response, f"download of {digest[:16]}… refused")
                total = response.content_length or 0
                with partial.open("wb") as f:
                    async for chunk in response.content.iter_chunked(CHUNK):
                        f.write(chunk)
                        await hasher.update(chunk)
                        received += len(chunk)
                        if progress is not None:
                            progress(received, total)
                    actual = await hasher.hexdigest()
        if actual != digest:
            raise SidecarError(f"downloaded bytes do not match asset {digest[:16]}…")
        os.replace(partial, dest)
    except aiohttp.ClientError as exc:
        raise SidecarError(f"cannot download from {host}:{port}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return dest


async def download_asset(
    host: str, port: int, digest: str, signing_key: Identity | nacl.signing.SigningKey
) -> bytes:
    """Download an asset's bytes from a sidecar (verified against ``digest``)."""
    check_hash(digest)
    path = f"/assets/{digest}"
    try:
        async with aiohttp.ClientSession() as s, s.get(
            _url(host, port, path), headers=sign_headers(signing_key, "GET", path, EMPTY_HASH)
        ) as response:
            await _raise_for(response, f"download of {digest[:16]}… refused")
            data = await response.read()
    except aiohttp.ClientError as exc:
        raise SidecarError(f"cannot download from {host}:{port}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != digest:
        raise SidecarError("downloaded bytes do not match the asset hash")
    return data


async def head_asset(
    host: str, port: int, digest: str, key: Identity | nacl.signing.SigningKey
) -> int | None:
    """The size of a remote asset, or ``None`` if the sidecar does not have it."""
    path = f"/assets/{check_hash(digest)}"
    try:
        async with aiohttp.ClientSession() as s, s.head(
            _url(host, port, path), headers=sign_headers(key, "HEAD", path, EMPTY_HASH)
        ) as response:
            if response.status == 404:
                return None
            await _raise_for(response, "HEAD refused")
            return response.content_length
    except aiohttp.ClientError as exc:
        raise SidecarError(f"cannot reach the sidecar at {host}:{port}: {exc}") from exc


async def delete_asset(
    host: str, port: int, digest: str, key: Identity | nacl.signing.SigningKey
) -> None:
    path = f"/assets/{check_hash(digest)}"
    try:
        async with aiohttp.ClientSession() as s, s.delete(
            _url(host, port, path), headers=sign_headers(key, "DELETE", path, EMPTY_HASH)
        ) as response:
            await _raise_for(response, "DELETE refused")
    except aiohttp.ClientError as exc:
        raise SidecarError(f"cannot reach the sidecar at {host}:{port}: {exc}") from exc


__all__ = [
    "Sidecar",
    "SidecarError",
    "delete_asset",
    "download_asset",
    "download_file",
    "download_to",
    "head_asset",
    "upload_asset",
    "upload_file",
]
