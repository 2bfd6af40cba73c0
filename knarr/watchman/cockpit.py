"""The watchman's link to its node's cockpit: ``GET /health`` and ``POST /v1/watchman``.

A few lines of HTTP/1.1 over asyncio streams rather than an HTTP client library, so the
supervisor that runs for months stays small (aiohttp alone would add ~12 MB to it).
It speaks to the node's Unix socket, or to ``cockpit_url`` with the node's bearer token.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from knarr.errors import NetworkError

SOCKET_NAME = "cockpit.sock"
TOKEN_NAME = "cockpit.token"
MAX_BODY = 1 << 20


class CockpitRefused(NetworkError):
    """The cockpit answered, with an HTTP error: sending the same again will not help."""


class CockpitLink:
    """Requests to one node's cockpit; each opens its own short connection."""

    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        self.data_dir = data_dir
        self.url = url
        self.socket_path = data_dir / SOCKET_NAME

    @property
    def where(self) -> str:
        return self.url or str(self.socket_path)

    async def health(self, timeout: float) -> dict[str, Any]:
        """The node's ``/health`` answer; :class:`NetworkError` if it does not answer."""
        body = await self.request("GET", "/health", timeout=timeout)
        if not isinstance(body, dict):
            raise NetworkError(f"the node's cockpit at {self.where} sent a non-object /health")
        return body

    async def record(self, payload: dict[str, Any], timeout: float = 5.0) -> None:
        """Record one supervisor event in the node's journal and event stream."""
        await self.request("POST", "/v1/watchman", payload, timeout=timeout)

    async def request(
        self, method: str, path: str, body: Any = None, *, timeout: float = 5.0
    ) -> Any:
        try:
            async with asyncio.timeout(timeout):
                return await self._exchange(method, path, body)
        except TimeoutError:
            raise NetworkError(
                f"the node's cockpit at {self.where} did not answer within {timeout:g} s"
            ) from None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise NetworkError(f"cannot reach the node's cockpit at {self.where}: {reason}"
                               ) from exc

    async def _exchange(self, method: str, path: str, body: Any) -> Any:
        headers = {"Host": "cockpit", "Connection": "close", "Accept": "application/json"}
        if self.url is None:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        else:
            parts = urlsplit(self.url)
            host, port = parts.hostname or "127.0.0.1", parts.port or 80
            headers["Host"] = f"{host}:{port}"
            token = self._token()
            if token:
                headers["Authorization"] = f"Bearer {token}"
            reader, writer = await asyncio.open_connection(host, port)
        try:
            payload = b""
            if body is not None:
                payload = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
                headers["Content-Length"] = str(len(payload))
            head = f"{method} {path} HTTP/1.1\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(head.encode("latin-1") + b"\r\n" + payload)
            await writer.drain()
            status, reply = await _read_response(reader)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
        data = json.loads(reply) if reply else None
        if status >= 400:
            detail = data.get("error") if isinstance(data, dict) else reply[:200].decode(
                "utf-8", "replace")
            raise CockpitRefused(f"the node's cockpit at {self.where} refused {method} {path}: "
                               f"HTTP {status} {detail}".rstrip())
        return data

    def _token(self) -> str | None:
        try:
            return (self.data_dir / TOKEN_NAME).read_text().strip() or None
        except OSError:
            return None


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        size = 0
        while True:
            length = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if length == 0:
                break
            size += length
            if size > MAX_BODY:
                raise ValueError("response too large")
            chunks.append(await reader.readexactly(length))
            await reader.readline()
        return int(parts[1]), b"".join(chunks)
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_BODY:
            raise ValueError("response too large")
        return int(parts[1]), await reader.readexactly(length)
    return int(parts[1]), await reader.read(MAX_BODY)
