"""A folder of wheels as a release source: newest first, tags, checksums, corrupt files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from knarr.watchman.errors import ReleaseError
from knarr.watchman.releases import FolderReleases, open_source
from tests.watchman.wheels import write_wheel


def _wheel(folder: Path, version: str) -> Path:
    return write_wheel(folder, "knarr", version, {"knarr/__init__.py": b""})


async def test_folder_source_latest_tagged_and_checked(tmp_path: Path) -> None:
    folder = tmp_path / "wheels"
    for version in ("0.9.0", "0.10.0", "0.10.0rc1"):
        _wheel(folder, version)
    write_wheel(folder, "other", "5.0", {"other/__init__.py": b""})
    source = open_source(str(folder), github_api="http://127.0.0.1:9")
    assert isinstance(source, FolderReleases)
    latest = await source.latest("knarr")
    assert (latest.version, latest.tag) == ("0.10.0", "v0.10.0")
    assert (await source.tagged("knarr", "v0.9.0")).version == "0.9.0"
    assert (await source.matching("knarr", "<0.10")).version == "0.9.0"
    with pytest.raises(ReleaseError, match="no knarr wheel for v1.0"):
        await source.tagged("knarr", "v1.0")
    fetched = await source.fetch(latest, tmp_path / "downloads")
    assert fetched.read_bytes() == (folder / latest.wheel_name).read_bytes()

    good = hashlib.sha256((folder / latest.wheel_name).read_bytes()).hexdigest()
    (folder / "checksums.txt").write_text(f"{'0' * 64}  {latest.wheel_name}\n")
    latest = await source.latest("knarr")
    with pytest.raises(ReleaseError, match="checksum mismatch"):
        await source.fetch(latest, tmp_path / "downloads2")
    assert not (tmp_path / "downloads2" / latest.wheel_name).exists()
    (folder / "checksums.txt").write_text(f"{good}  {latest.wheel_name}\n")
    await source.fetch(latest, tmp_path / "downloads3")
    with pytest.raises(ReleaseError, match="has no entry for knarr-0.9.0"):
        await source.fetch(await source.tagged("knarr", "0.9.0"), tmp_path / "downloads4")


async def test_a_wheel_of_the_wrong_version_inside_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "wheels"
    inner = _wheel(tmp_path / "x", "0.1.0")
    folder.mkdir()
    (folder / "knarr-0.2.0-py3-none-any.whl").write_bytes(inner.read_bytes())
    source = FolderReleases(folder)
    with pytest.raises(ReleaseError, match="holds knarr 0.1.0, expected knarr 0.2.0"):
        await source.fetch(await source.latest("knarr"), tmp_path / "d")
    with pytest.raises(ReleaseError, match="does not exist"):
        await FolderReleases(tmp_path / "none").latest("knarr")
