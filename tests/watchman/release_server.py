"""A loopback aiohttp server that speaks the GitHub releases API shape for the tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web


@dataclass
class FakeRelease:
    tag: str
    assets: dict[str, bytes] = field(default_factory=dict)


class ReleaseServer:
    """``/repos/OWNER/REPO/releases[/latest|/tags/TAG]`` and asset downloads."""

    def __init__(self) -> None:
        self.releases: dict[str, FakeRelease] = {}
        self.latest: str | None = None
        self.garbage = False
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    def add(self, tag: str, wheel: Path, *, checksum: str | None = "right") -> None:
        """Publish ``wheel`` as release ``tag`` with a checksums.txt (``"right"``,
        ``"wrong"``) or none (``None``)."""
        data = wheel.read_bytes()
        release = FakeRelease(tag, {wheel.name: data})
        if checksum is not None:
            digest = hashlib.sha256(data if checksum == "right" else b"other").hexdigest()
            release.assets["checksums.txt"] = f"{digest}  {wheel.name}\n".encode()
        self.releases[tag] = release

    def _json(self, release: FakeRelease) -> dict[str, object]:
        return {
            "tag_name": release.tag, "name": release.tag, "draft": False, "prerelease": False,
            "assets": [{"name": name, "size": len(data),
                        "browser_download_url": f"{self.url}/download/{release.tag}/{name}"}
                       for name, data in release.assets.items()],
        }

    async def _latest(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        if self.garbage:
            return web.Response(text="<html>rate limited, try later</html>")
        if self.latest is None:
            raise web.HTTPNotFound()
        return web.json_response(self._json(self.releases[self.latest]))

    async def _tag(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        if self.garbage:
            return web.json_response({"message": "unexpected"})
        release = self.releases.get(request.match_info["tag"])
        if release is None:
            raise web.HTTPNotFound()
        return web.json_response(self._json(release))

    async def _list(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.json_response([self._json(r) for r in self.releases.values()])

    async def _download(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        release = self.releases[request.match_info["tag"]]
        return web.Response(body=release.assets[request.match_info["name"]])

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/repos/{owner}/{repo}/releases/latest", self._latest)
        app.router.add_get("/repos/{owner}/{repo}/releases/tags/{tag}", self._tag)
        app.router.add_get("/repos/{owner}/{repo}/releases", self._list)
        app.router.add_get("/download/{tag}/{name}", self._download)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
