"""Where releases come from: the GitHub releases API (``github:owner/repo``) or a folder
of wheels, and fetching one wheel with its SHA-256 checked.

A release's wheel is verified against a ``checksums.txt`` (``sha256sum`` format) published
beside it when there is one, and is always opened as a zip and its metadata read before
pip sees it, so a corrupt download or an answer that is not a release becomes one
:class:`~knarr.watchman.errors.ReleaseError` line and nothing is installed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from knarr.watchman.errors import ReleaseError
from knarr.watchman.versions import (
    is_prerelease,
    is_version,
    normalize,
    parse_version,
    parse_wheel_name,
)

CHECKSUMS = "checksums.txt"
MAX_DOWNLOAD = 512 << 20
HTTP_TIMEOUT = 60.0
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Release:
    """One release of one project, and where its wheel and checksums are."""

    project: str
    version: str
    tag: str
    wheel_name: str
    wheel_location: str
    """An URL (GitHub) or a file path (folder)."""
    checksums_location: str | None = None


class ReleaseSource(Protocol):
    """Finds releases of a project and fetches their wheels."""

    name: str

    async def latest(self, project: str) -> Release: ...

    async def tagged(self, project: str, tag: str) -> Release: ...

    async def matching(self, project: str, specifier: str) -> Release: ...

    async def fetch(self, release: Release, folder: Path) -> Path: ...


def open_source(source: str, *, github_api: str, token: str | None = None) -> ReleaseSource:
    """The source a ``[upgrade] source`` / plugin ``source`` names."""
    if source.startswith("github:"):
        owner, _, repo = source.removeprefix("github:").partition("/")
        return GitHubReleases(owner, repo, api=github_api, token=token)
    return FolderReleases(Path(source))


def parse_checksums(text: str) -> dict[str, str]:
    """``sha256sum`` output → file name → lowercase hex digest."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and _SHA256_RE.fullmatch(parts[0]):
            sums[parts[1].strip().lstrip("*")] = parts[0].lower()
    return sums


def check_wheel(path: Path, project: str, version: str) -> None:
    """Raise :class:`ReleaseError` unless ``path`` is an intact wheel of ``project`` ``version``."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise ReleaseError(f"{path.name} is corrupt: {bad} fails its CRC check")
            metas = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
            if len(metas) != 1:
                raise ReleaseError(f"{path.name} is not a wheel: no single .dist-info/METADATA")
            fields: dict[str, str] = {}
            for line in zf.read(metas[0]).decode("utf-8", "replace").splitlines():
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ReleaseError(f"{path.name} is corrupt: not a valid wheel ({exc})") from None
    if normalize(fields.get("name", "")) != normalize(project) or \
            fields.get("version") != version:
        raise ReleaseError(f"{path.name} holds {fields.get('name')} {fields.get('version')}, "
                           f"expected {project} {version}")


def verify_sha256(path: Path, expected: str | None, name: str | None = None) -> None:
    if expected is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ReleaseError(f"checksum mismatch for {name or path.name}: checksums.txt says "
                           f"{expected[:16]}…, the file is {digest.hexdigest()[:16]}…; "
                           "not installing it")


def _pick_wheel(names: list[str], project: str, version: str | None) -> str | None:
    """The wheel of ``project`` (at ``version``) among asset names, pure-Python ones first."""
    found: list[str] = []
    for name in names:
        try:
            wheel = parse_wheel_name(name)
        except ValueError:
            continue
        if wheel.project == normalize(project) and (
                version is None or parse_version(wheel.version) == parse_version(version)):
            found.append(name)
    found.sort(key=lambda n: (not n.endswith("-none-any.whl"), n))
    return found[0] if found else None


# --- a folder of wheels -------------------------------------------------------------------


class FolderReleases:
    """``knarr-0.2.0-py3-none-any.whl`` files in a folder; a ``checksums.txt`` is honoured."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = str(folder)

    def _all(self, project: str) -> list[Release]:
        if not self.folder.is_dir():
            raise ReleaseError(f"release folder {self.folder} does not exist")
        checksums = self.folder / CHECKSUMS
        by_version: dict[str, list[str]] = {}
        for path in self.folder.glob("*.whl"):
            try:
                wheel = parse_wheel_name(path.name)
            except ValueError:
                continue
            if wheel.project == normalize(project):
                by_version.setdefault(wheel.version, []).append(path.name)
        releases = []
        for version, names in by_version.items():
            name = _pick_wheel(names, project, version)
            assert name is not None
            releases.append(Release(project, version, f"v{version}", name,
                                    str(self.folder / name),
                                    str(checksums) if checksums.is_file() else None))
        return sorted(releases, key=lambda r: parse_version(r.version))

    async def latest(self, project: str) -> Release:
        releases = [r for r in self._all(project) if not is_prerelease(r.version)]
        if not releases:
            raise ReleaseError(f"no {project} wheels in {self.folder}")
        return releases[-1]

    async def tagged(self, project: str, tag: str) -> Release:
        if not is_version(tag):
            raise ReleaseError(f"{tag!r} is not a version tag (like v0.2.0)")
        for release in self._all(project):
            if parse_version(release.version) == parse_version(tag):
                return release
        raise ReleaseError(f"no {project} wheel for {tag} in {self.folder}")

    async def matching(self, project: str, specifier: str) -> Release:
        from knarr.watchman.versions import satisfies

        found = [r for r in self._all(project)
                 if not is_prerelease(r.version) and satisfies(r.version, specifier)]
        if not found:
            raise ReleaseError(f"no {project} wheel matching {specifier!r} in {self.folder}")
        return found[-1]

    async def fetch(self, release: Release, folder: Path) -> Path:
        source = Path(release.wheel_location)
        expected = None
        if release.checksums_location:
            sums = parse_checksums(Path(release.checksums_location).read_text("utf-8", "replace"))
            expected = sums.get(release.wheel_name)
            if expected is None:
                raise ReleaseError(f"{CHECKSUMS} in {self.folder} has no entry for "
                                   f"{release.wheel_name}")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / release.wheel_name
        shutil.copyfile(source, target)
        try:
            verify_sha256(target, expected)
            check_wheel(target, release.project, release.version)
        except ReleaseError:
            target.unlink(missing_ok=True)
            raise
        return target


# --- the GitHub releases API --------------------------------------------------------------


class GitHubReleases:
    """``GET /repos/OWNER/REPO/releases/latest | /releases/tags/TAG | /releases``."""

    def __init__(self, owner: str, repo: str, *, api: str, token: str | None = None) -> None:
        self.owner, self.repo = owner, repo
        self.api = api.rstrip("/")
        self.token = token
        self.name = f"github:{owner}/{repo}"

    async def latest(self, project: str) -> Release:
        return self._release(project, await self._get_json("/releases/latest"))

    async def tagged(self, project: str, tag: str) -> Release:
        return self._release(project, await self._get_json(f"/releases/tags/{tag}"))

    async def matching(self, project: str, specifier: str) -> Release:
        from knarr.watchman.versions import satisfies

        listing = await self._get_json("/releases?per_page=100")
        if not isinstance(listing, list):
            raise self._garbage("the release list is not a JSON array")
        best: Release | None = None
        for item in listing:
            if not isinstance(item, Mapping) or item.get("draft") or item.get("prerelease"):
                continue
            tag = item.get("tag_name")
            if not isinstance(tag, str) or not is_version(tag) or is_prerelease(tag):
                continue
            if not satisfies(parse_version(tag).text, specifier):
                continue
            try:
                release = self._release(project, item)
            except ReleaseError:
                continue
            if best is None or parse_version(release.version) > parse_version(best.version):
                best = release
        if best is None:
            raise ReleaseError(f"no release of {self.name} matches {specifier!r} "
                               "and has a wheel")
        return best

    def _release(self, project: str, data: Any) -> Release:
        if not isinstance(data, Mapping):
            raise self._garbage("the answer is not a JSON object")
        tag, assets = data.get("tag_name"), data.get("assets")
        if not isinstance(tag, str) or not isinstance(assets, list):
            raise self._garbage("no tag_name and assets in the answer")
        urls: dict[str, str] = {}
        for asset in assets:
            if isinstance(asset, Mapping) and isinstance(asset.get("name"), str) and \
                    isinstance(asset.get("browser_download_url"), str):
                urls[asset["name"]] = asset["browser_download_url"]
        if not is_version(tag):
            raise ReleaseError(f"{self.name}: release tag {tag!r} is not a version")
        version = parse_version(tag).text
        wheel = _pick_wheel(list(urls), project, version)
        if wheel is None:
            raise ReleaseError(f"{self.name} release {tag} has no {project} {version} wheel "
                               "among its assets")
        return Release(project, version, tag, wheel, urls[wheel], urls.get(CHECKSUMS))

    def _garbage(self, what: str) -> ReleaseError:
        return ReleaseError(f"the release source {self.name} ({self.api}) answered something "
                            f"that is not a GitHub release: {what}")

    async def fetch(self, release: Release, folder: Path) -> Path:
        expected = None
        if release.checksums_location:
            text = (await self._get(release.checksums_location, limit=1 << 20)).decode(
                "utf-8", "replace")
            expected = parse_checksums(text).get(release.wheel_name)
            if expected is None:
                raise ReleaseError(f"{self.name} release {release.tag}: {CHECKSUMS} has no "
                                   f"entry for {release.wheel_name}")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / release.wheel_name
        partial = folder / f".{release.wheel_name}.{os.getpid()}.part"
        try:
            partial.write_bytes(await self._get(release.wheel_location, limit=MAX_DOWNLOAD))
            verify_sha256(partial, expected, release.wheel_name)
            os.replace(partial, target)
            check_wheel(target, release.project, release.version)
        except ReleaseError:
            partial.unlink(missing_ok=True)
            target.unlink(missing_ok=True)
            raise
        return target

    async def _get_json(self, path: str) -> Any:
        import json

        body = await self._get(f"{self.api}/repos/{self.owner}/{self.repo}{path}",
                               limit=8 << 20, api=True)
        try:
            return json.loads(body)
        except ValueError:
            raise self._garbage(f"not JSON ({body[:60]!r})") from None

    async def _get(self, url: str, *, limit: int, api: bool = False) -> bytes:
        import aiohttp

        headers = {"User-Agent": "knarr-watchman"}
        if api:
            headers["Accept"] = "application/vnd.github+json"
        if self.token and urlsplit(url).netloc == urlsplit(self.api).netloc:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT), headers=headers
            ) as session, session.get(url) as response:
                if response.status == 404:
                    raise ReleaseError(f"{self.name}: not found: {url}")
                if response.status in (401, 403, 429):
                    raise ReleaseError(f"{self.name}: {url} refused with HTTP {response.status}"
                                       " (rate limited? pass a GitHub token)")
                if response.status >= 400:
                    raise ReleaseError(f"{self.name}: {url} answered HTTP {response.status}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > limit:
                        raise ReleaseError(f"{self.name}: {url} is larger than {limit} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ReleaseError(f"{self.name}: cannot fetch {url}: "
                               f"{exc or type(exc).__name__}") from None
