"""Wheels for the tests, written directly with :mod:`zipfile` (no build backend needed).

``knarr_wheel`` packages this repository's real ``knarr/`` source with another version
number, so an upgrade test runs the real node at "0.2.0"; ``patch`` swaps file contents
(a version that cannot become healthy). ``pip wheel`` would need the network (build
isolation fetches setuptools) or the ``wheel`` package, neither of which a test may rely on.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(
    dest: Path, dist: str, version: str, files: Mapping[str, bytes], *,
    entry_points: str = "", requires_python: str = ">=3.11",
) -> Path:
    """A pure-Python wheel named ``{dist}-{version}-py3-none-any.whl`` in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    info = f"{dist}-{version}.dist-info"
    meta = {
        f"{info}/METADATA": (f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
                             f"Requires-Python: {requires_python}\n").encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: knarr-tests\n"
                         b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    if entry_points:
        meta[f"{info}/entry_points.txt"] = entry_points.encode()
    path = dest / f"{dist}-{version}-py3-none-any.whl"
    record: list[str] = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in {**files, **meta}.items():
            zf.writestr(name, data)
            record.append(_record_line(name, data))
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def knarr_wheel(dest: Path, version: str, patch: Mapping[str, str] | None = None) -> Path:
    """This repository's ``knarr`` package as version ``version``."""
    files: dict[str, bytes] = {}
    for file in sorted((REPO / "knarr").rglob("*")):
        if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
            files[file.relative_to(REPO).as_posix()] = file.read_bytes()
    init = files["knarr/__init__.py"].decode()
    files["knarr/__init__.py"] = re.sub(
        r'__version__ = "[^"]*"', f'__version__ = "{version}"', init).encode()
    for name, text in (patch or {}).items():
        files[name] = text.encode()
    entry = ("[console_scripts]\nknarr = knarr.cli.main:main\n"
             "knarr-watchman = knarr.watchman.cli:main\n")
    return write_wheel(dest, "knarr", version, files, entry_points=entry)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
