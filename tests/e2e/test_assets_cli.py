"""Files through the CLI, each side in its own process: ``knarr serve`` with a sidecar,
``knarr request`` with ``@file`` inputs and ``--output-dir``, and a 200 MB round trip
whose peak memory stays flat on both sides."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.cli import ENV, KNARR, free_port, knarr, read_banner

MiB = 2**20

CONFIG = """\
[node]
port = {port}
host = "127.0.0.1"
storage = "node.db"
sidecar_port = {sidecar_port}
max_asset_size = {max_asset_size}

[network]
bootstrap = []
upnp = false

[sidecar]
asset_dir = "assets"

[skills.process-image]
handler = "skills/image.py:process"
description = "Turns an image around"
input_schema = {{image = "string"}}
output_schema = {{result = "string"}}

[skills.names-an-asset]
handler = "skills/image.py:names_an_asset"
description = "Returns an asset reference without storing anything"
input_schema = {{text = "string"}}
output_schema = {{result = "string"}}

[skills.same-file]
handler = "skills/image.py:same_file"
description = "Returns the file it was given, after checking its hash"
input_schema = {{blob = "string"}}
output_schema = {{result = "string"}}
"""

SKILL_CODE = '''
import hashlib
from pathlib import Path


def processed(data: bytes) -> bytes:
    return b"PROCESSED:" + data[::-1]


async def process(input_data, ctx):
    image = Path(input_data["image"]).read_bytes()
    return {"result": f"knarr-asset://{ctx.store_asset(processed(image))}"}


async def names_an_asset(input_data, ctx):
    return {"result": "knarr-asset://" + "ab" * 32}


async def same_file(input_data, ctx):
    digest = hashlib.sha256()
    with open(input_data["blob"], "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return {"result": f"knarr-asset://{digest.hexdigest()}"}
'''

PEAK_RSS_CLIENT = """
import sys
from pathlib import Path
from knarr.cli.main import main
code = main(sys.argv[1:])
peak = next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("VmHWM:"))
print(f"peak_rss_kib={peak}", file=sys.stderr)
sys.exit(code)
"""
"""``knarr`` with its peak RSS on stderr. ``VmHWM`` belongs to the process's own memory
map; ``ru_maxrss`` would not do: after a (v)fork and exec it still counts the parent's
pages (here, a pytest process that may be far larger than the client)."""


def processed(data: bytes) -> bytes:
    return b"PROCESSED:" + data[::-1]


@dataclass
class Provider:
    folder: Path
    port: int
    sidecar_port: int
    pid: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def assets(self) -> Path:
        return self.folder / "assets"

    def peak_rss(self) -> int:
        """The process's peak resident set so far (``VmHWM``), in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/<pid>/status")


@contextmanager
def serving(folder: Path, *, sidecar: bool = True, max_asset_size: int = 10 * MiB
            ) -> Iterator[Provider]:
    """``knarr serve`` in ``folder`` with both skills, until the block ends (SIGINT)."""
    folder.mkdir(parents=True)
    (folder / "skills").mkdir()
    (folder / "skills" / "image.py").write_text(SKILL_CODE)
    port = free_port()
    sidecar_port = free_port((socket.SOCK_STREAM,)) if sidecar else 0
    while sidecar_port == port:
        sidecar_port = free_port((socket.SOCK_STREAM,))
    (folder / "knarr.toml").write_text(CONFIG.format(
        port=port, sidecar_port=sidecar_port, max_asset_size=max_asset_size
    ))
    with (folder / "serve.log").open("w") as log:
        proc = subprocess.Popen(
            [*KNARR, "serve"], cwd=folder, stdout=subprocess.PIPE, stderr=log, text=True,
            env=ENV,
        )
    banner = read_banner(proc)
    try:
        assert f"Listening: 127.0.0.1:{port}" in banner, (folder / "serve.log").read_text()
        sidecar_line = f"Sidecar: 127.0.0.1:{sidecar_port} (assets in {folder / 'assets'})"
        assert (sidecar_line in banner) == sidecar, banner
        assert "Serving skill: process-image (public)" in banner
        yield Provider(folder, port, sidecar_port, proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        log_text = (folder / "serve.log").read_text()
        assert proc.returncode == 0, log_text
        assert "Traceback" not in log_text, log_text


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    with serving(tmp_path_factory.mktemp("assets-cli") / "provider") as p:
        yield p


@pytest.fixture(scope="module")
def provider_without_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    with serving(tmp_path_factory.mktemp("assets-cli") / "no-sidecar", sidecar=False) as p:
        yield p


def no_leftovers(assets: Path) -> list[str]:
    """Temp files in the asset folder's ``.incoming`` and anything not named by a hash."""
    stray = [p.name for p in assets.iterdir()
             if p.name != ".incoming" and not (len(p.name) == 64 and p.is_file())]
    return stray + [p.name for p in (assets / ".incoming").iterdir()]


def test_an_image_goes_up_as_a_file_and_the_result_comes_back_as_one(
    provider: Provider, tmp_path: Path
) -> None:
    photo = b"\x89PNG\r\n\x1a\n" + os.urandom(300_000)
    (tmp_path / "photo.png").write_bytes(photo)
    expected = processed(photo)
    digest = hashlib.sha256(expected).hexdigest()

    out = knarr("request", "--skill", "process-image", "--input", '{"image": "@photo.png"}',
                "--bootstrap", provider.bootstrap, "--output-dir", "results/", cwd=tmp_path,
                timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == [
        "Status: completed",
        "Output:",
        f"  result: knarr-asset://{digest}",
        f"Saved result: results/{digest}",
    ]
    assert (tmp_path / "results" / digest).read_bytes() == expected
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [digest]
    # The provider kept the upload and the result under their hashes, nothing else.
    assert (provider.assets / hashlib.sha256(photo).hexdigest()).read_bytes() == photo
    assert (provider.assets / digest).is_file()
    assert no_leftovers(provider.assets) == []
    assert "Traceback" not in out.stderr


def test_the_result_as_json_names_the_downloaded_file(
    provider: Provider, tmp_path: Path
) -> None:
    import json

    (tmp_path / "in.png").write_bytes(b"tiny image")
    digest = hashlib.sha256(processed(b"tiny image")).hexdigest()
    out = knarr("request", "--skill", "process-image", "--input", '{"image": "@in.png"}',
                "--bootstrap", provider.bootstrap, "--output-dir", "out", "--json",
                cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["output"] == {"result": f"knarr-asset://{digest}"}
    assert result["downloaded"] == {"result": f"out/{digest}"}
    assert (tmp_path / "out" / digest).read_bytes() == processed(b"tiny image")


def test_a_missing_input_file_is_a_one_line_error(provider: Provider, tmp_path: Path) -> None:
    out = knarr("request", "--skill", "process-image", "--input", '{"image": "@nope.png"}',
                "--bootstrap", provider.bootstrap, cwd=tmp_path, timeout=60)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        "error: --input: image: file not found: nope.png"
    ]
    assert out.stdout == ""


def test_a_provider_without_a_sidecar_cannot_take_files(
    provider_without_sidecar: Provider, tmp_path: Path
) -> None:
    (tmp_path / "photo.png").write_bytes(b"an image")
    out = knarr("request", "--skill", "process-image", "--input", '{"image": "@photo.png"}',
                "--bootstrap", provider_without_sidecar.bootstrap, cwd=tmp_path, timeout=60)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0] == "Status: failed" and len(lines) == 2, lines
    assert lines[1].startswith("Error: provider ") and lines[1].endswith(" has no sidecar")
    assert "Traceback" not in out.stderr


def test_an_output_dir_that_cannot_be_made_stops_the_request_before_it_runs(
    provider: Provider, tmp_path: Path
) -> None:
    photo = b"never uploaded " + os.urandom(32)
    (tmp_path / "photo.png").write_bytes(photo)
    out = knarr("request", "--skill", "process-image", "--input", '{"image": "@photo.png"}',
                "--bootstrap", provider.bootstrap, "--output-dir", "photo.png", cwd=tmp_path,
                timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: --output-dir: cannot use 'photo.png': File exists"
    ]
    assert out.stdout == ""
    assert not (provider.assets / hashlib.sha256(photo).hexdigest()).exists()  # not sent


def test_a_result_whose_files_cannot_be_fetched_is_still_shown(
    provider_without_sidecar: Provider, tmp_path: Path
) -> None:
    """The task ran and was paid for: its output is printed, the failed download named."""
    out = knarr("request", "--skill", "names-an-asset", "--input", '{"text": "x"}',
                "--bootstrap", provider_without_sidecar.bootstrap, "--output-dir", "out",
                cwd=tmp_path, timeout=60)
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        "Status: completed",
        "Output:",
        f"  result: knarr-asset://{'ab' * 32}",
        "Download failed: the result names assets but the provider has no sidecar",
    ]
    assert "Traceback" not in out.stderr


def _write_big_file(path: Path, size: int) -> str:
    """``size`` bytes of one random MiB repeated; returns its SHA-256."""
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size // MiB):
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.slow
def test_200_mb_round_trip_keeps_memory_flat_on_both_sides(tmp_path: Path) -> None:
    try:
        _round_trip_200_mb(tmp_path)
    finally:  # pytest keeps the last few temp folders: do not leave 600 MB in them
        for big in (tmp_path / "big.bin", *tmp_path.glob("results/*"),
                    *tmp_path.glob("provider/assets/*")):
            if big.is_file():
                big.unlink()


def _round_trip_200_mb(tmp_path: Path) -> None:
    """200 MiB up with `knarr request @file`, back with `--output-dir`: every byte
    checked, and both processes' peak RSS under 100 MiB."""
    size = 200 * MiB
    big = tmp_path / "big.bin"
    digest = _write_big_file(big, size)
    with serving(tmp_path / "provider", max_asset_size=size) as provider:
        out = subprocess.run(
            [sys.executable, "-c", PEAK_RSS_CLIENT, "request", "--skill", "same-file",
             "--input", '{"blob": "@big.bin"}', "--bootstrap", provider.bootstrap,
             "--output-dir", "results", "--timeout", "300"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=ENV,
        )
        provider_peak = provider.peak_rss()
        assert out.returncode == 0, out.stdout + out.stderr
        assert no_leftovers(provider.assets) == []
        assert (provider.assets / digest).stat().st_size == size

    assert out.stdout.splitlines()[-1] == f"Saved result: results/{digest}"
    downloaded = tmp_path / "results" / digest
    assert downloaded.stat().st_size == size
    check = hashlib.sha256()
    with downloaded.open("rb") as f:
        while chunk := f.read(MiB):
            check.update(chunk)
    assert check.hexdigest() == digest
    # Progress went to stderr, in steps, for both directions.
    assert "Uploading big.bin: 100% (200.0/200.0 MiB)" in out.stderr
    assert "Downloading result: 100% (200.0/200.0 MiB)" in out.stderr

    client_peak = int(out.stderr.rsplit("peak_rss_kib=", 1)[1].split()[0]) * 1024
    assert client_peak < 100 * MiB, f"client peak RSS {client_peak / MiB:.1f} MiB"
    assert provider_peak < 100 * MiB, f"provider peak RSS {provider_peak / MiB:.1f} MiB"
