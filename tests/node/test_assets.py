"""The asset sidecar between real nodes on loopback: transfers, what handlers see of
assets, and every bad request refused with its status and nothing left on disk."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp import web

from knarr.errors import KnarrError, TaskRefused
from knarr.node import sidecar as sidecar_module
from knarr.node.assets import ASSET_SCHEME, AssetError, AssetStore, HashMismatch
from knarr.node.identity import Identity
from knarr.node.node import Node
from knarr.node.sidecar import (
    EMPTY_HASH,
    UNSIGNED_PAYLOAD,
    HashBehind,
    Sidecar,
    SidecarError,
    delete_asset,
    download_file,
    download_to,
    head_asset,
    sign_headers,
    upload_file,
)
from tests.conftest import NodeFactory, sheet, wait_for

LIMIT = 1024 * 1024
"""``max_asset_size`` of the provider in these tests, small enough to overrun cheaply."""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def uri(digest: str) -> str:
    return ASSET_SCHEME + digest


def leftovers(store: AssetStore, *keep: str) -> list[str]:
    """Everything in the asset folder and its ``.incoming`` temp folder, except the
    committed assets named in ``keep``."""
    top = sorted(p.name for p in store.directory.iterdir() if p.name != ".incoming")
    incoming = sorted(f".incoming/{p.name}" for p in (store.directory / ".incoming").iterdir())
    return [name for name in top if name not in keep] + incoming


@pytest.fixture
async def nodes(make_node: NodeFactory, tmp_path: Path) -> tuple[Node, Node]:
    """A provider and a requester, both with sidecars on OS-chosen ports, joined."""
    provider = await make_node(
        sidecar_port=0, asset_dir=tmp_path / "provider-assets", max_asset_size=LIMIT
    )
    requester = await make_node(sidecar_port=0, asset_dir=tmp_path / "requester-assets")
    await requester.join([f"127.0.0.1:{provider.port}"])
    return provider, requester


def _store(node: Node) -> AssetStore:
    assert node.assets is not None
    return node.assets


def _at(node: Node) -> tuple[str, int]:
    return "127.0.0.1", node.sidecar_port


# ---------------------------------------------------------------- transfers


async def test_upload_and_download_bytes_with_the_products_import_path(
    nodes: tuple[Node, Node],
) -> None:
    from knarr.cli.main import download_asset, upload_asset

    provider, requester = nodes
    data = os.urandom(3 * 256 * 1024 + 17)  # several sidecar chunks and a ragged tail
    digest = await upload_asset(*_at(provider), data, requester.identity)
    assert digest == sha(data)
    assert _store(provider).path(digest).read_bytes() == data
    assert await download_asset(*_at(provider), digest, requester.identity) == data
    assert leftovers(_store(provider), digest) == []


async def test_upload_file_and_download_file(nodes: tuple[Node, Node], tmp_path: Path) -> None:
    provider, requester = nodes
    source = tmp_path / "photo.png"
    source.write_bytes(os.urandom(LIMIT))  # exactly the limit is allowed
    digest, size = await upload_file(*_at(provider), source, requester.identity)
    assert (digest, size) == (sha(source.read_bytes()), LIMIT)

    dest = tmp_path / "out" / "copy.png"
    dest.parent.mkdir()
    assert await download_file(*_at(provider), digest, requester.identity, dest) == dest
    assert dest.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.png"]  # no .part


@pytest.mark.parametrize("data", [b"a small asset", os.urandom(3 * 1024 * 1024 + 7)],
                         ids=["small", "several-batches"])
async def test_download_to_a_store_verifies_and_commits(
    nodes: tuple[Node, Node], data: bytes
) -> None:
    provider, requester = nodes
    digest = sha(data)
    _store(provider).path(digest).write_bytes(data)  # over the provider's upload limit
    seen: list[tuple[int, int]] = []
    path = await download_to(*_at(provider), digest, requester.identity, _store(requester),
                             progress=lambda done, total: seen.append((done, total)))
    assert path == _store(requester).path(digest) and path.read_bytes() == data
    assert leftovers(_store(requester), digest) == []
    assert seen[-1] == (len(data), len(data))


async def test_head_gives_the_size_or_none(nodes: tuple[Node, Node]) -> None:
    provider, requester = nodes
    digest = _store(provider).put(b"x" * 1234)
    assert await head_asset(*_at(provider), digest, requester.identity) == 1234
    assert await head_asset(*_at(provider), sha(b"absent"), requester.identity) is None


async def test_the_node_itself_may_delete(nodes: tuple[Node, Node]) -> None:
    provider, _ = nodes
    digest = _store(provider).put(b"doomed")
    await delete_asset(*_at(provider), digest, provider.identity)
    assert not _store(provider).has(digest)
    assert leftovers(_store(provider)) == []


async def test_another_node_may_not_delete(nodes: tuple[Node, Node]) -> None:
    provider, requester = nodes
    digest = _store(provider).put(b"kept")
    with pytest.raises(SidecarError) as caught:
        await delete_asset(*_at(provider), digest, requester.identity)
    assert caught.value.status == 403
    assert "only the node itself may delete" in str(caught.value)
    assert _store(provider).has(digest)


# ---------------------------------------------------------------- handlers


async def _serve(provider: Node, handler: Callable[..., Any], name: str = "look") -> None:
    provider.register_handler(name, handler)
    await provider.announce({**sheet(name), "input_schema": {}, "output_schema": {}})


async def test_a_two_argument_handler_gets_a_task_context(nodes: tuple[Node, Node]) -> None:
    from knarr.dht.sidecar import TaskContext

    provider, requester = nodes
    seen: list[object] = []

    async def handler(data: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
        seen.append(ctx)
        return {}

    await _serve(provider, handler)
    await requester.request("look", {})
    [ctx] = seen
    assert isinstance(ctx, TaskContext)
    assert ctx.skill == "look" and ctx.requester == requester.identity.public_key.hex()


async def test_top_level_asset_uris_arrive_as_local_files_and_nested_ones_do_not(
    nodes: tuple[Node, Node],
) -> None:
    provider, requester = nodes
    digest = _store(provider).put(b"pixels")
    seen: list[dict[str, Any]] = []

    async def handler(data: dict[str, Any], ctx: object) -> dict[str, Any]:
        seen.append(data)
        return {"read": Path(data["image"]).read_text()}

    await _serve(provider, handler)
    sent = {
        "image": uri(digest),
        "nested": {"image": uri(digest)},
        "listed": [uri(digest)],
        "text": "not an asset",
    }
    assert await requester.request("look", sent) == {"read": "pixels"}
    [data] = seen
    assert Path(data["image"]).is_file()
    assert Path(data["image"]) == _store(provider).path(digest)
    assert {k: v for k, v in data.items() if k != "image"} == {
        k: v for k, v in sent.items() if k != "image"
    }


async def test_an_asset_the_provider_lacks_is_fetched_from_the_requesters_sidecar(
    nodes: tuple[Node, Node],
) -> None:
    provider, requester = nodes
    digest = _store(requester).put(b"only the requester has this")
    assert not _store(provider).has(digest)

    async def handler(data: dict[str, Any], ctx: object) -> dict[str, Any]:
        return {"size": Path(data["doc"]).stat().st_size}

    await _serve(provider, handler)
    assert await requester.request("look", {"doc": uri(digest)}) == {"size": 27}
    assert _store(provider).path(digest).read_bytes() == b"only the requester has this"
    assert leftovers(_store(provider), digest) == []


@pytest.mark.parametrize(
    "value",
    [
        "knarr-asset://../../etc/passwd",
        "knarr-asset://" + "a" * 63,
        "knarr-asset://" + "A" * 64,
        "knarr-asset://" + "a" * 64 + "/../x",
        "knarr-asset://",
    ],
    ids=["traversal", "63-hex", "uppercase", "suffix", "empty"],
)
async def test_a_malformed_asset_uri_is_invalid_input(
    nodes: tuple[Node, Node], value: str
) -> None:
    provider, requester = nodes
    calls: list[object] = []

    async def handler(data: dict[str, Any], ctx: object) -> dict[str, Any]:
        calls.append(data)
        return {}

    await _serve(provider, handler)
    with pytest.raises(TaskRefused) as caught:
        await requester.request("look", {"image": value})
    assert caught.value.code == "invalid_input"
    assert "not an asset hash" in str(caught.value)
    assert calls == []
    assert leftovers(_store(provider)) == []


async def test_an_asset_nobody_has_is_refused_and_leaves_nothing(
    nodes: tuple[Node, Node],
) -> None:
    provider, requester = nodes

    async def handler(data: dict[str, Any], ctx: object) -> dict[str, Any]:
        raise AssertionError("must not run")

    await _serve(provider, handler)
    missing = sha(b"nobody has this")
    with pytest.raises(TaskRefused) as caught:
        await requester.request("look", {"image": uri(missing)})
    assert caught.value.code == "invalid_input"
    assert f"asset {missing[:16]}… could not be fetched" in str(caught.value)
    assert "HTTP 404" in str(caught.value)
    assert leftovers(_store(provider)) == []
    assert leftovers(_store(requester)) == []


async def test_store_asset_returns_a_hash_whose_file_exists(nodes: tuple[Node, Node]) -> None:
    from knarr.dht.sidecar import TaskContext

    provider, requester = nodes
    paths: list[Path] = []

    async def handler(data: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        digest = ctx.store_asset(b"rendered " + data["text"].encode())
        paths.append(ctx.asset_path(digest))
        assert ctx.get_asset(digest) == b"rendered " + data["text"].encode()
        return {"result": uri(digest)}

    await _serve(provider, handler)
    output = await requester.request("look", {"text": "cat"})
    digest = output["result"].removeprefix(ASSET_SCHEME)
    assert digest == sha(b"rendered cat")
    assert paths == [_store(provider).path(digest)] and paths[0].is_file()
    assert await sidecar_module.download_asset(
        *_at(provider), digest, requester.identity
    ) == b"rendered cat"


async def test_a_provider_without_a_sidecar_refuses_asset_inputs(
    make_node: NodeFactory, tmp_path: Path
) -> None:
    provider = await make_node()  # no sidecar_port: no sidecar, no asset folder
    requester = await make_node(sidecar_port=0, asset_dir=tmp_path / "requester-assets")
    await requester.join([f"127.0.0.1:{provider.port}"])
    assert provider.sidecar is None and provider.sidecar_port == 0

    async def handler(data: dict[str, Any], ctx: object) -> dict[str, Any]:
        raise AssertionError("must not run")

    await _serve(provider, handler)
    digest = _store(requester).put(b"an image")
    with pytest.raises(TaskRefused) as caught:
        await requester.request("look", {"image": uri(digest)})
    assert caught.value.code == "invalid_input"
    assert "this provider has no sidecar for assets" in str(caught.value)


async def test_store_asset_without_a_sidecar_says_how_to_enable_it(
    make_node: NodeFactory,
) -> None:
    node = await make_node()

    async def handler(data: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"result": ctx.store_asset(b"x")}

    node.register_handler("make", handler)
    with pytest.raises(AssetError, match=r"no sidecar; set \[node\] sidecar_port"):
        await node.call_local("make", {})


# ---------------------------------------------------------------- raw HTTP


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _url(node: Node, path: str) -> yarl.URL:
    """The URL exactly as written: ``encoded=True`` keeps ``%2f`` and ``..`` from being
    normalised away by the client."""
    return yarl.URL(f"http://127.0.0.1:{node.sidecar_port}{path}", encoded=True)


async def _send(
    http: aiohttp.ClientSession, method: str, node: Node, path: str,
    headers: Mapping[str, str], data: Any = None,
) -> tuple[int, str]:
    """The status and the ``error`` of a JSON answer (else the body as it came)."""
    async with http.request(method, _url(node, path), headers=dict(headers), data=data) as r:
        text = await r.text()
    try:
        return r.status, str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return r.status, text


async def test_an_unsigned_request_is_401(
    nodes: tuple[Node, Node], http: aiohttp.ClientSession
) -> None:
    provider, _ = nodes
    digest = _store(provider).put(b"private")
    for method in ("GET", "HEAD", "DELETE"):
        assert await _send(http, method, provider, f"/assets/{digest}", {}) == (
            401, "" if method == "HEAD" else "missing or malformed X-Knarr-* headers"
        )
    assert await _send(http, "PUT", provider, "/assets", {}, data=b"data") == (
        401, "missing or malformed X-Knarr-* headers"
    )
    assert leftovers(_store(provider), digest) == []


async def test_a_bad_signature_is_401(
    nodes: tuple[Node, Node], http: aiohttp.ClientSession
) -> None:
    provider, requester = nodes
    digest = _store(provider).put(b"private")
    path = f"/assets/{digest}"
    signed = sign_headers(requester.identity, "GET", path, EMPTY_HASH)
    forged = {**signed, "X-Knarr-PublicKey": provider.identity.public_key.hex()}
    assert await _send(http, "GET", provider, path, forged) == (
        401, "signature does not verify"
    )
    # A valid signature covers one method and one path only.
    as_delete = sign_headers(provider.identity, "DELETE", path, EMPTY_HASH)
    other_path = sign_headers(provider.identity, "GET", f"/assets/{sha(b'other')}", EMPTY_HASH)
    for moved in (as_delete, other_path):
        assert await _send(http, "GET", provider, path, moved) == (
            401, "signature does not verify"
        )
    assert _store(provider).has(digest)


async def test_a_stale_or_future_timestamp_is_401(
    nodes: tuple[Node, Node], http: aiohttp.ClientSession
) -> None:
    provider, requester = nodes
    digest = _store(provider).put(b"private")
    path = f"/assets/{digest}"
    for skew in (-120.0, 120.0):
        headers = sign_headers(requester.identity, "GET", path, EMPTY_HASH,
                               now=time.time() + skew)
        assert await _send(http, "GET", provider, path, headers) == (
            401, "stale or future X-Knarr-Timestamp"
        )


async def test_a_replayed_request_is_401_the_second_time(
    nodes: tuple[Node, Node], http: aiohttp.ClientSession
) -> None:
    provider, requester = nodes
    digest = _store(provider).put(b"once")
    path = f"/assets/{digest}"
    headers = sign_headers(requester.identity, "GET", path, EMPTY_HASH)
    assert await _send(http, "GET", provider, path, headers) == (200, "once")
    assert await _send(http, "GET", provider, path, headers) == (
        401, "nonce already seen from this sender"
    )

    data = b"upload once"
    put = sign_headers(requester.identity, "PUT", "/assets", sha(data))
    assert (await _send(http, "PUT", provider, "/assets", put, data=data))[0] == 200
    assert await _send(http, "PUT", provider, "/assets", put, data=data) == (
        401, "nonce already seen from this sender"
    )
    assert leftovers(_store(provider), digest, sha(data)) == []


async def test_a_body_that_does_not_match_its_hash_is_400_and_not_kept(
    nodes: tuple[Node, Node], http: aiohttp.ClientSession
) -> None:
    provider, requester = nodes
    headers = sign_headers(requester.identity, "PUT", "/assets", sha(b"what was signed"))
    assert await _send(http, "PUT", provider, "/assets", headers, data=b"swapped") == (
        400, f"content hashes to {sha(b'swapped')[:16]}…, not {sha(b'what was signed')[:16]}…"
    )
    assert leftovers(_store(provider)) == []


async def _oversize_chunks() -> AsyncIterator[bytes]:
    """A body with no Content-Length (chunked) that overruns the limit half-way."""
    for _ in range(2 * LIMIT // 4096):
        yield b"z" * 4096


def _oversize_bodies() -> list[Any]:
    return [
        pytest.param(lambda: io.BytesIO(b"z" * (LIMIT + 1)), id="content-length"),
        pytest.param(_oversize_chunks, id="chunked"),
    ]


CONTENT_HASHES = [
    pytest.param(sha(b"z" * (LIMIT + 1)), id="signed-hash"),
    pytest.param(UNSIGNED_PAYLOAD, id="unsigned-payload"),
]


@pytest.mark.parametrize("content_hash", CONTENT_HASHES)
@pytest.mark.parametrize("body", _oversize_bodies())
async def test_an_oversize_upload_leaves_nothing_on_disk(
    nodes: tuple[Node, Node], http: aiohttp.ClientSession, body: Callable[[], Any],
    content_hash: str,
) -> None:
    provider, requester = nodes
    headers = sign_headers(requester.identity, "PUT", "/assets", content_hash)
    status, _ = await _send(http, "PUT", provider, "/assets", headers, data=body())
    assert status >= 400
    assert leftovers(_store(provider)) == []


@pytest.mark.parametrize("content_hash", CONTENT_HASHES)
@pytest.mark.parametrize("body", _oversize_bodies())
async def test_an_oversize_upload_is_413_with_the_limit(
    nodes: tuple[Node, Node], http: aiohttp.ClientSession, body: Callable[[], Any],
    content_hash: str,
) -> None:
    provider, requester = nodes
    headers = sign_headers(requester.identity, "PUT", "/assets", content_hash)
    status, message = await _send(http, "PUT", provider, "/assets", headers, data=body())
    assert status == 413
    assert message in (
        f"asset is {LIMIT + 1} bytes; the limit is {LIMIT}",  # refused from Content-Length
        f"asset exceeds the limit of {LIMIT} bytes",  # refused mid-stream
    )


async def test_upload_file_over_the_limit_says_so(
    nodes: tuple[Node, Node], tmp_path: Path
) -> None:
    provider, requester = nodes
    big = tmp_path / "big.bin"
    big.write_bytes(b"q" * (LIMIT + 1))
    with pytest.raises(SidecarError) as caught:
        await upload_file(*_at(provider), big, requester.identity)
    assert caught.value.status == 413
    assert f"limit is {LIMIT}" in str(caught.value)


@pytest.mark.parametrize("content_hash", [sha(b"a" * 16384), UNSIGNED_PAYLOAD])
async def test_an_upload_cut_off_mid_way_leaves_nothing(
    nodes: tuple[Node, Node], http: aiohttp.ClientSession, content_hash: str
) -> None:
    provider, requester = nodes
    started = asyncio.Event()

    async def cut_off() -> AsyncIterator[bytes]:
        yield b"a" * 4096
        yield b"a" * 4096
        started.set()
        raise ConnectionAbortedError("the client gave up")

    headers = sign_headers(requester.identity, "PUT", "/assets", content_hash)
    with pytest.raises((aiohttp.ClientError, ConnectionAbortedError)):
        await _send(http, "PUT", provider, "/assets", headers, data=cut_off())
    assert started.is_set()
    await wait_for(lambda: leftovers(_store(provider)) == [])


# ---------------------------------------------------------------- UNSIGNED-PAYLOAD


async def test_an_unsigned_payload_is_stored_under_the_hash_of_what_arrived(
    nodes: tuple[Node, Node], http: aiohttp.ClientSession
) -> None:
    provider, requester = nodes
    data = os.urandom(3 * 1024 * 1024 // 4 + 5)  # several chunks and a ragged tail
    headers = sign_headers(requester.identity, "PUT", "/assets", UNSIGNED_PAYLOAD)
    async with http.put(_url(provider, "/assets"), headers=headers, data=data) as r:
        assert r.status == 200
        assert await r.json() == {"hash": sha(data), "size": len(data)}
    assert _store(provider).path(sha(data)).read_bytes() == data
    assert leftovers(_store(provider), sha(data)) == []


async def test_upload_file_sends_an_unsigned_payload_and_checks_the_answer(
    nodes: tuple[Node, Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, requester = nodes
    signed: list[str] = []
    real_sign = sidecar_module.sign_headers

    def spy(key: Any, method: str, path: str, content_hash: str, **kw: Any) -> dict[str, str]:
        signed.append(content_hash)
        return real_sign(key, method, path, content_hash, **kw)

    monkeypatch.setattr(sidecar_module, "sign_headers", spy)
    source = tmp_path / "f.bin"
    source.write_bytes(os.urandom(LIMIT // 2 + 3))
    assert await upload_file(*_at(provider), source, requester.identity) == (
        sha(source.read_bytes()), LIMIT // 2 + 3
    )
    assert signed == [UNSIGNED_PAYLOAD]  # one request, and the file was read once


async def test_unsigned_payload_is_only_for_put(
    nodes: tuple[Node, Node], http: aiohttp.ClientSession
) -> None:
    provider, _ = nodes
    digest = _store(provider).put(b"private")
    path = f"/assets/{digest}"
    for method in ("GET", "HEAD", "DELETE"):
        headers = sign_headers(provider.identity, method, path, UNSIGNED_PAYLOAD)
        assert await _send(http, method, provider, path, headers) == (
            401, "" if method == "HEAD" else "malformed X-Knarr-* headers"
        )
    assert _store(provider).has(digest)


async def test_an_unsigned_payload_needs_a_signature_over_unsigned_payload(
    nodes: tuple[Node, Node], http: aiohttp.ClientSession
) -> None:
    provider, requester = nodes
    data = b"body"
    # Signed over the body's hash, sent as UNSIGNED-PAYLOAD (and the other way round).
    over_hash = sign_headers(requester.identity, "PUT", "/assets", sha(data))
    as_unsigned = {**over_hash, "X-Knarr-Content-Hash": UNSIGNED_PAYLOAD}
    over_unsigned = sign_headers(requester.identity, "PUT", "/assets", UNSIGNED_PAYLOAD)
    as_hash = {**over_unsigned, "X-Knarr-Content-Hash": sha(data)}
    forged = {**over_unsigned, "X-Knarr-PublicKey": provider.identity.public_key.hex()}
    for headers in (as_unsigned, as_hash, forged):
        assert await _send(http, "PUT", provider, "/assets", headers, data=data) == (
            401, "signature does not verify"
        )
    stale = sign_headers(requester.identity, "PUT", "/assets", UNSIGNED_PAYLOAD,
                         now=time.time() - 120)
    assert await _send(http, "PUT", provider, "/assets", stale, data=data) == (
        401, "stale or future X-Knarr-Timestamp"
    )
    assert leftovers(_store(provider)) == []


async def test_an_unsigned_payload_is_not_replayable(
    nodes: tuple[Node, Node], http: aiohttp.ClientSession
) -> None:
    provider, requester = nodes
    headers = sign_headers(requester.identity, "PUT", "/assets", UNSIGNED_PAYLOAD)
    assert (await _send(http, "PUT", provider, "/assets", headers, data=b"one"))[0] == 200
    assert await _send(http, "PUT", provider, "/assets", headers, data=b"another") == (
        401, "nonce already seen from this sender"
    )
    assert leftovers(_store(provider), sha(b"one")) == []


class _LyingSidecar(Sidecar):
    """Stores the upload but answers the hash of something else."""

    async def _put(self, request: web.Request) -> web.Response:
        stored = json.loads((await super()._put(request)).text or "{}")
        return web.json_response({**stored, "hash": sha(b"something else")})


class _SidecarBeforeUnsignedPayload(Sidecar):
    """A sidecar that only knows signed content hashes, as before UNSIGNED-PAYLOAD."""

    puts: list[str]

    async def _put(self, request: web.Request) -> web.Response:
        claimed = request.headers.get("X-Knarr-Content-Hash", "")
        self.puts.append(claimed)
        if claimed == UNSIGNED_PAYLOAD:
            raise web.HTTPUnauthorized(text=json.dumps({"error": "malformed X-Knarr-* headers"}),
                                       content_type="application/json")
        return await super()._put(request)


@pytest.fixture
async def lone_sidecar(tmp_path: Path) -> AsyncIterator[Callable[[type[Sidecar]], Any]]:
    """Starts one bare sidecar of a given class on loopback; stopped afterwards."""
    started: list[Sidecar] = []

    async def start(cls: type[Sidecar]) -> Sidecar:
        sidecar = cls(Identity.generate(), AssetStore(tmp_path / f"store-{len(started)}"))
        await sidecar.start("127.0.0.1", 0)
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        await sidecar.stop()


async def test_upload_file_refuses_an_answer_with_another_hash(
    lone_sidecar: Callable[[type[Sidecar]], Any], tmp_path: Path
) -> None:
    liar = await lone_sidecar(_LyingSidecar)
    source = tmp_path / "f.bin"
    source.write_bytes(b"the real bytes")
    with pytest.raises(SidecarError, match="under a different hash or size"):
        await upload_file("127.0.0.1", liar.port, source, Identity.generate())


async def test_upload_file_falls_back_to_a_signed_hash_for_an_older_sidecar(
    lone_sidecar: Callable[[type[Sidecar]], Any], tmp_path: Path
) -> None:
    old = await lone_sidecar(_SidecarBeforeUnsignedPayload)
    assert isinstance(old, _SidecarBeforeUnsignedPayload)
    old.puts = []
    source = tmp_path / "f.bin"
    source.write_bytes(b"for an old peer")
    digest = sha(b"for an old peer")
    assert await upload_file("127.0.0.1", old.port, source, Identity.generate()) == (
        digest, len(b"for an old peer")
    )
    assert old.puts == [UNSIGNED_PAYLOAD, digest]
    assert old.store.path(digest).read_bytes() == b"for an old peer"


@pytest.mark.parametrize(
    "path",
    [
        "/assets/..%2f..%2fsecret.txt",
        "/assets/..%2F..%2Fsecret.txt",
        "/assets/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/assets/../../secret.txt",
        "/assets/..",
        "/assets/" + "a" * 63,
        "/assets/" + "a" * 65,
        "/assets/" + "A" * 64,
        "/assets/" + "a" * 63 + "%00",
    ],
    ids=["encoded-slash", "encoded-slash-upper", "encoded-dots", "dots", "parent",
         "63-hex", "65-hex", "uppercase", "nul"],
)
@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
async def test_path_traversal_never_reaches_a_file_outside_the_folder(
    nodes: tuple[Node, Node], http: aiohttp.ClientSession, method: str, path: str,
) -> None:
    provider, _ = nodes
    store = _store(provider)
    secret = store.directory.parent / "secret.txt"
    secret.write_text("do not serve me")
    url = _url(provider, path)
    # Signed as the node itself (the only key allowed to DELETE) over the path the
    # server sees, so the refusal is about the name and not about the signature.
    headers = sign_headers(provider.identity, method, url.path, EMPTY_HASH)
    status, message = await _send(http, method, provider, path, headers)
    assert status in (400, 404), (status, message)
    assert "do not serve me" not in message
    if status == 400 and method != "HEAD":
        assert message == "asset names are 64 lowercase hex characters"
    assert secret.read_text() == "do not serve me"
    assert leftovers(store) == []


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
async def test_a_missing_asset_is_404(
    nodes: tuple[Node, Node], http: aiohttp.ClientSession, method: str
) -> None:
    provider, _ = nodes
    path = f"/assets/{sha(b'never stored')}"
    headers = sign_headers(provider.identity, method, path, EMPTY_HASH)
    assert await _send(http, method, provider, path, headers) == (
        404, "" if method == "HEAD" else "no such asset"
    )


async def test_download_file_of_a_missing_asset_leaves_no_part_file(
    nodes: tuple[Node, Node], tmp_path: Path
) -> None:
    provider, requester = nodes
    folder = tmp_path / "results"
    folder.mkdir()
    with pytest.raises(SidecarError) as caught:
        await download_file(*_at(provider), sha(b"absent"), requester.identity, folder / "x")
    assert caught.value.status == 404 and "no such asset" in str(caught.value)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("size", [14, 3 * 1024 * 1024 + 7], ids=["small", "several-batches"])
async def test_a_corrupt_copy_on_the_server_is_never_kept_by_the_client(
    nodes: tuple[Node, Node], tmp_path: Path, size: int
) -> None:
    provider, requester = nodes
    digest = sha(b"the real bytes")
    _store(provider).path(digest).write_bytes(b"t" * size)  # a lying sidecar
    folder = tmp_path / "results"
    folder.mkdir()
    with pytest.raises(SidecarError, match="do not match"):
        await download_file(*_at(provider), digest, requester.identity, folder / digest)
    assert list(folder.iterdir()) == []
    with pytest.raises(HashMismatch):
        await download_to(*_at(provider), digest, requester.identity, _store(requester))
    assert leftovers(_store(requester)) == []
    with pytest.raises(SidecarError, match="do not match"):
        await sidecar_module.download_asset(*_at(provider), digest, requester.identity)


async def test_an_unreachable_sidecar_is_a_sidecar_error(tmp_path: Path) -> None:
    client = Identity.generate()
    source = tmp_path / "f.bin"
    source.write_bytes(b"data")
    closed = _closed_port()
    with pytest.raises(SidecarError, match=f"cannot upload to 127.0.0.1:{closed}"):
        await upload_file("127.0.0.1", closed, source, client)
    with pytest.raises(SidecarError, match=f"cannot download from 127.0.0.1:{closed}"):
        await sidecar_module.download_asset("127.0.0.1", closed, sha(b"data"), client)
    with pytest.raises(SidecarError, match=f"cannot download from 127.0.0.1:{closed}"):
        await download_file("127.0.0.1", closed, sha(b"data"), client, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- bugs found


@pytest.mark.parametrize("call", ["head", "delete"])
async def test_head_and_delete_report_an_unreachable_sidecar_as_sidecar_error(
    nodes: tuple[Node, Node], call: str
) -> None:
    _, requester = nodes
    closed = _closed_port()
    function = head_asset if call == "head" else delete_asset
    with pytest.raises(SidecarError):
        await function("127.0.0.1", closed, sha(b"x"), requester.identity)


async def test_identical_requests_in_the_same_millisecond_are_not_replays(
    nodes: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, requester = nodes
    digest = _store(provider).put(b"shared input")
    frozen = time.time()
    monkeypatch.setattr(sidecar_module, "time", SimpleNamespace(time=lambda: frozen))
    results = await asyncio.gather(
        *(sidecar_module.download_asset(*_at(provider), digest, requester.identity)
          for _ in range(3)),
        return_exceptions=True,
    )
    assert results == [b"shared input"] * 3


async def test_upload_asset_of_a_few_megabytes_does_not_warn(
    nodes: tuple[Node, Node],
) -> None:
    from knarr.cli.main import upload_asset

    provider, requester = nodes
    data = b"m" * (2 * LIMIT)  # over aiohttp's 1 MiB threshold for raw bytes
    _store(provider).max_size = len(data)
    assert await upload_asset(*_at(provider), data, requester.identity) == sha(data)


def test_errors_are_knarr_errors() -> None:
    assert issubclass(SidecarError, KnarrError) and issubclass(AssetError, KnarrError)


@pytest.mark.parametrize("sizes", [[], [1], [HashBehind.BATCH], [7_000] * 300,
                                   [HashBehind.BATCH - 1, 2, HashBehind.BATCH * 2, 5]])
async def test_hashing_one_batch_behind_gives_the_stream_s_sha256(sizes: list[int]) -> None:
    """The download path hashes on a worker thread, batch by batch: whatever the chunk
    sizes, the digest is the stream's, in order."""
    chunks = [os.urandom(n) for n in sizes]
    hasher = HashBehind()
    for chunk in chunks:
        await hasher.update(chunk)
    assert await hasher.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
