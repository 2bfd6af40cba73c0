"""Knarr's asset sidecar on loopback, beside a plain aiohttp file server measured in the
same run.

Three processes: a sidecar (a ``Node`` with ``sidecar_port=0``, as ``knarr serve`` runs
it), a floor server (a minimal aiohttp app: ``PUT /files`` streams the body to a file,
``GET /files/<name>`` answers with ``FileResponse``; no signing, no hashing, no rename),
and this script, the client of both. For each size and direction, ours and the floor
alternate transfer by transfer (so both see the same machine, which matters on a shared
host):

* upload: ``upload_file`` (signs an ``UNSIGNED-PAYLOAD`` PUT and streams the file, hashing
  it as it goes; the sidecar hashes it as it arrives, renames it into place and answers the
  hash, which the client compares with its own) against an aiohttp ``PUT`` of the file read
  in the same 256 KiB chunks on the loop;
* download: ``download_file`` (signed ``GET``, hashed as it is written, renamed) against
  an aiohttp ``GET`` written to a file as it arrives.

Every timed transfer writes a new file (the copies stored by an upload, and a download's
file, are removed after it, outside the timing), so neither side pays for replacing or
deleting an earlier copy while timed.

Reported: the median MiB/s of ``--repeat`` transfers (default: enough to move ~500 MiB,
2 to 30), ours/floor ratios, CPU seconds per GiB on each side, the "hash bound" (the CPU
ratio ours would have if it cost the floor plus only the SHA-256 passes the protocol
requires, at the SHA-256 cost measured at the start of the run), and the peak resident
memory (``VmHWM``, reset before each size and direction via ``/proc/<pid>/clear_refs``)
of both servers and of the client (which runs both clients). Every temp file lives in
one temporary folder that is removed at the end, also on Ctrl-C or SIGTERM; each size's
files are removed as soon as it is done.

    .venv/bin/python benchmarks/assets.py [--sizes 1M,100M,1G] [--repeat N] [--json]
                                          [--profile DIR]

``--profile DIR`` adds one extra upload and download of the largest size under cProfile
on the sidecar and the client (not reported) and writes ``DIR/sidecar.prof`` and
``DIR/client.prof``; both count CPU time, not wall time (on a shared
host a process waiting for a core would otherwise look busy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from children import Child, ChildProfile, started  # benchmarks/children.py

HOST = "127.0.0.1"
MiB = 2**20
CHUNK = 256 * 1024
TRANSFER_TIMEOUT_S = 600.0
CHILD_TIMEOUT_S = 120.0
TARGET_RATIO = 0.70
TARGET_PEAK = 100 * MiB
BYTES_PER_SIZE = 500 * MiB
"""Default repeats move about this much per (size, direction, implementation)."""


def progress(message: str) -> None:
    print(f"[assets] {message}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """``"1M"`` → 1 MiB, ``"1G"`` → 1 GiB, ``"4096"`` → 4096 bytes."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(float(text.rstrip("KMG")) * scale)


def size_label(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


# ------------------------------------------------------------------- memory and CPU


def peak_rss(pid: int | str = "self") -> int:
    """Peak resident set (``VmHWM``) in bytes, since start or the last reset."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status (Linux only)")


def reset_peak_rss() -> None:
    """Start ``VmHWM`` again from the current RSS (Linux ≥ 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def cpu_seconds() -> float:
    """This process's CPU time, all threads, at nanosecond resolution."""
    return time.process_time()


def sha256_cpu_s_per_gib() -> float:
    """What SHA-256 alone costs here: CPU seconds per GiB (best of three 128 MiB runs
    of 1 MiB updates)."""
    import hashlib

    block = memoryview(os.urandom(MiB))
    best = math.inf
    for _ in range(3):
        digest = hashlib.sha256()
        started = cpu_seconds()
        for _ in range(128):
            digest.update(block)
        best = min(best, cpu_seconds() - started)
    return best * 8


HASHES = {"upload": 2, "download": 1}
"""SHA-256 passes over the body that the protocol requires of ours and not of the floor:
an upload is hashed by the client (which names the asset by it) and by the sidecar (which
names the file by it); a download by the client only (the sidecar names files by hash)."""


def knarr_location() -> str:
    import knarr

    return str(Path(knarr.__file__).parent)


# ----------------------------------------------------------------- children: servers


async def control_lines() -> asyncio.StreamReader:
    """This process's stdin as a stream: the parent's commands, EOF when it is gone."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def answer(value: object) -> None:
    print(json.dumps(value), flush=True)


async def obey(commands: asyncio.StreamReader) -> None:
    """Serve the parent's commands until stdin closes: ``stats``, ``reset-peak``,
    ``profile-start``, ``profile-stop PATH``."""
    profiling = ChildProfile(time.process_time)
    while line := (await commands.readline()).decode().strip():
        verb, _, arg = line.partition(" ")
        if verb == "stats":
            answer({"cpu_s": cpu_seconds(), "peak_rss": peak_rss(), "rss": _rss()})
        elif verb == "reset-peak":
            reset_peak_rss()
            answer({"ok": True})
        elif (reply := profiling.answer(verb, arg)) is not None:
            answer(reply)
        else:
            answer({"ok": False, "error": f"unknown command {line!r}"})


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


async def run_sidecar(folder: Path) -> None:
    from knarr.node.node import Node

    commands = await control_lines()
    node = Node(HOST, 0, sidecar_port=0, asset_dir=folder, max_asset_size=2**40)
    await node.start()
    try:
        answer({"port": node.sidecar_port, "pid": os.getpid(), "knarr": knarr_location()})
        await obey(commands)
    finally:
        await node.stop(grace=0)


async def run_floor(folder: Path) -> None:
    """Stream ``PUT /files`` bodies to a file and serve them back with FileResponse."""
    from aiohttp import web

    commands = await control_lines()
    counter = iter(range(1 << 62))

    async def put(request: web.Request) -> web.Response:
        name = f"f{next(counter)}"
        size = 0
        with (folder / name).open("wb") as f:
            async for chunk in request.content.iter_chunked(CHUNK):
                f.write(chunk)
                size += len(chunk)
        return web.json_response({"name": name, "size": size})

    async def get(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not name.startswith("f") or not name[1:].isdigit():
            raise web.HTTPBadRequest()
        return web.FileResponse(folder / name, chunk_size=CHUNK)

    async def delete(request: web.Request) -> web.Response:
        for path in folder.iterdir():
            path.unlink()
        return web.json_response({})

    app = web.Application(client_max_size=1024)
    app.router.add_put("/files", put)
    app.router.add_get("/files/{name}", get)
    app.router.add_delete("/files", delete)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        answer({"port": port, "pid": os.getpid()})
        await obey(commands)
    finally:
        await runner.cleanup()


class Server(Child):
    """A server child (``sidecar`` or ``floor``) with a folder of its own."""

    def __init__(self, role: str, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, __file__, "--role", role, "--folder", str(folder)]
        super().__init__(argv, name=role, timeout=CHILD_TIMEOUT_S)
        self.folder = folder


def children(root: Path, *roles: str) -> contextlib.AbstractContextManager[list[Server]]:
    """The named server processes, each with a folder under ``root``, ready."""
    return started(lambda role: Server(role, root / role), roles)


# ---------------------------------------------------------------- parent: transfers


def write_file(path: Path, size: int) -> None:
    """``size`` bytes of one random MiB repeated (every asset hash is distinct per run)."""
    block = os.urandom(MiB)
    with path.open("wb") as f:
        for offset in range(0, size, MiB):
            f.write(block[: min(MiB, size - offset)])


Transfer = Callable[[], Awaitable[None]]


@dataclass
class Block:
    """``repeat`` transfers of one size, one direction, one implementation."""

    impl: str
    direction: str
    size: int
    repeat: int
    seconds: list[float]
    mib_s: float
    """Median."""
    best_mib_s: float
    client_cpu_s_per_gib: float
    server_cpu_s_per_gib: float
    client_peak_rss: int
    """Of the client process across the pair of blocks (it runs both, alternately)."""
    server_peak_rss: int
    error: str = ""


@dataclass
class Side:
    impl: str
    server: Child
    transfer: Transfer
    cleanup: Transfer
    """Run after each transfer, outside the timing: removes what it wrote."""
    seconds: list[float] = field(default_factory=list)
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    error: str = ""


async def timed(side: Side) -> None:
    """One transfer, its wall time and the CPU time it cost each side."""
    server_before = side.server.ask("stats")["cpu_s"]
    client_before = time.process_time()
    started = time.perf_counter()
    try:
        async with asyncio.timeout(TRANSFER_TIMEOUT_S):
            await side.transfer()
    except Exception as exc:  # reported, and the run goes on
        side.error = f"{type(exc).__name__}: {exc}"
        return
    side.seconds.append(time.perf_counter() - started)
    side.client_cpu += time.process_time() - client_before
    side.server_cpu += side.server.ask("stats")["cpu_s"] - server_before
    await side.cleanup()


async def measure_pair(direction: str, size: int, repeat: int, *sides: Side) -> list[Block]:
    """``repeat`` rounds of one transfer per side, alternating, so that both see the same
    machine (this matters on a shared host). Every other round runs the sides in the
    opposite order: going first costs more (measured at 1 GiB downloads, two rounds: the
    side that always went first paid 0.45-0.98 client CPU s/GiB more than when it went
    second, which put the download ratio at 1.0-1.16)."""
    for side in sides:  # one untimed round, so that neither side meets a cold machine first
        with contextlib.suppress(Exception):
            await side.transfer()
            await side.cleanup()
    for side in sides:
        side.server.ask("reset-peak")
    reset_peak_rss()
    for round_ in range(repeat):
        for side in sides if round_ % 2 == 0 else reversed(sides):
            if not side.error:
                await timed(side)
    client_peak = peak_rss()
    blocks = []
    for side in sides:
        gib = size * max(len(side.seconds), 1) / 2**30
        block = Block(
            impl=side.impl, direction=direction, size=size, repeat=len(side.seconds),
            seconds=side.seconds,
            mib_s=size / MiB / statistics.median(side.seconds) if side.seconds else math.nan,
            best_mib_s=size / MiB / min(side.seconds) if side.seconds else math.nan,
            client_cpu_s_per_gib=side.client_cpu / gib,
            server_cpu_s_per_gib=side.server_cpu / gib,
            client_peak_rss=client_peak,
            server_peak_rss=int(side.server.ask("stats")["peak_rss"]), error=side.error,
        )
        note = f", ERROR {side.error}" if side.error else ""
        progress(f"  {side.impl:5} {direction:8} {size_label(size):>7}: "
                 f"{block.mib_s:8.1f} MiB/s (median of {block.repeat}), peak RSS "
                 f"server {block.server_peak_rss / MiB:.0f} MiB, client "
                 f"{client_peak / MiB:.0f} MiB{note}")
        blocks.append(block)
    return blocks


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """The file in ``CHUNK``-sized reads on the loop, as ``upload_file`` reads it (minus
    the hashing). Passing the open file as ``data=`` instead makes aiohttp read every
    256 KiB chunk on an executor thread, which cost this client 0.6-1.0 CPU s/GiB
    against 0.3-0.4 here (2026-12-06): a slower floor than plain aiohttp can be."""
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


async def floor_upload(port: int, path: Path) -> str:
    import aiohttp

    size = path.stat().st_size
    async with aiohttp.ClientSession() as s, s.put(
        f"http://{HOST}:{port}/files", data=file_chunks(path),
        headers={"Content-Length": str(size)},
    ) as r:
        r.raise_for_status()
        body = await r.json()
    if body["size"] != size:
        raise RuntimeError("the floor stored a different size")
    return str(body["name"])


async def floor_download(port: int, name: str, dest: Path) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"http://{HOST}:{port}/files/{name}") as r:
        r.raise_for_status()
        with dest.open("wb") as f:
            async for chunk in r.content.iter_chunked(CHUNK):
                f.write(chunk)


async def floor_clear(port: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.delete(f"http://{HOST}:{port}/files") as r:
        r.raise_for_status()


async def measure_size(
    size: int, repeat: int, work: Path, sidecar: Server, floor: Server,
) -> list[Block]:
    from knarr.node.identity import Identity
    from knarr.node.sidecar import download_file, upload_file

    identity = Identity.generate()
    source = work / "source.bin"
    dest = work / "download.bin"
    progress(f"{size_label(size)}: writing the file, {repeat} transfers per block")
    write_file(source, size)
    digest = ""
    floor_name = ""
    blocks: list[Block] = []
    try:
        async def ours_up() -> None:
            nonlocal digest
            digest, _ = await upload_file(HOST, sidecar.port, source, identity)

        async def floor_up() -> None:
            nonlocal floor_name
            floor_name = await floor_upload(floor.port, source)

        async def ours_down() -> None:
            await download_file(HOST, sidecar.port, digest, identity, dest)

        async def floor_down() -> None:
            await floor_download(floor.port, floor_name, dest)

        async def ours_forget() -> None:
            clear_folder(sidecar.folder)

        async def floor_forget() -> None:
            await floor_clear(floor.port)

        async def forget_download() -> None:
            dest.unlink()

        # Each timed upload writes a new file on both servers (as a new asset does):
        # the stored copies are removed between transfers, outside the timing, so that
        # neither side pays for replacing or deleting the previous one.
        blocks += await measure_pair(
            "upload", size, repeat, Side("floor", floor, floor_up, floor_forget),
            Side("knarr", sidecar, ours_up, ours_forget),
        )
        if digest and floor_name:
            await ours_up()
            await floor_up()
            blocks += await measure_pair(
                "download", size, repeat, Side("floor", floor, floor_down, forget_download),
                Side("knarr", sidecar, ours_down, forget_download),
            )
    finally:
        source.unlink(missing_ok=True)
        dest.unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            await floor_clear(floor.port)
        clear_folder(sidecar.folder)
    return blocks


async def profiled_run(directory: Path, size: int, work: Path, sidecar: Server) -> dict[str, str]:
    from knarr.node.identity import Identity
    from knarr.node.sidecar import download_file, upload_file

    directory.mkdir(parents=True, exist_ok=True)
    server_path = str((directory / "sidecar.prof").resolve())
    client_path = directory / "client.prof"
    source, dest = work / "source.bin", work / "download.bin"
    write_file(source, size)
    identity = Identity.generate()
    progress(f"profiling one {size_label(size)} upload and download (numbers not reported)")
    sidecar.ask("profile-start")
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    try:
        digest, _ = await upload_file(HOST, sidecar.port, source, identity)
        await download_file(HOST, sidecar.port, digest, identity, dest)
    finally:
        profile.disable()
        sidecar.ask(f"profile-stop {server_path}")
        source.unlink(missing_ok=True)
        dest.unlink(missing_ok=True)
        clear_folder(sidecar.folder)
    profile.dump_stats(client_path)
    progress(f"  wrote {server_path} and {client_path}")
    return {"sidecar": server_path, "client": str(client_path)}


def clear_folder(folder: Path) -> None:
    """Remove the stored assets (this run's temp folder; only the sidecar's own key may
    DELETE over HTTP, and the client's is not it)."""
    for path in folder.glob("*"):
        if path.is_file():
            path.unlink()


def default_repeat(size: int) -> int:
    return max(2, min(30, math.ceil(BYTES_PER_SIZE / size)))


async def run_benchmark(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    blocks: list[Block] = []
    profiles: dict[str, str] = {}
    progress(f"starting the sidecar and the floor server (temp folder {root})")
    with children(root, "sidecar", "floor") as (sidecar, floor):
        idle = {"sidecar": sidecar.ask("stats")["rss"], "floor": floor.ask("stats")["rss"],
                "client": _rss()}
        sha256 = sha256_cpu_s_per_gib()
        work = root / "client"
        work.mkdir()
        for size in args.sizes:
            repeat = args.repeat or default_repeat(size)
            blocks += await measure_size(size, repeat, work, sidecar, floor)
        if args.profile:
            profiles = await profiled_run(Path(args.profile), max(args.sizes), work, sidecar)
        knarr = sidecar.hello["knarr"]
    return {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {platform.system()}",
            "load_before": args.load_before,
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "command": " ".join(["benchmarks/assets.py", *sys.argv[1:]]),
            "knarr": knarr,
            "idle_rss": idle,
            "sha256_cpu_s_per_gib": sha256,
        },
        "blocks": [asdict(b) for b in blocks],
        "profiles": profiles,
    }


# ------------------------------------------------------------------------------ report


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (size, direction): ours beside the floor, with the ratio.

    ``hash_bound`` is the CPU ratio ours would have if it cost the floor's CPU plus only
    the SHA-256 passes the protocol requires (``HASHES``, at this run's measured cost): the
    best the ratio can be when client and sidecar share one core's worth of CPU."""
    found = {(b["impl"], b["direction"], b["size"]): b for b in results["blocks"]}
    sha256 = results["meta"]["sha256_cpu_s_per_gib"]
    out = []
    sizes = sorted({b["size"] for b in results["blocks"]})
    for size in sizes:
        for direction in ("upload", "download"):
            ours = found.get(("knarr", direction, size))
            floor = found.get(("floor", direction, size))
            if ours is None or floor is None:
                continue
            floor_cpu = floor["client_cpu_s_per_gib"] + floor["server_cpu_s_per_gib"]
            out.append({
                "size": size, "direction": direction, "repeat": ours["repeat"],
                "knarr_mib_s": ours["mib_s"], "floor_mib_s": floor["mib_s"],
                "ratio": ours["mib_s"] / floor["mib_s"],
                "knarr_best_mib_s": ours["best_mib_s"], "floor_best_mib_s": floor["best_mib_s"],
                "best_ratio": ours["best_mib_s"] / floor["best_mib_s"],
                "cpu_ratio": floor_cpu / (ours["client_cpu_s_per_gib"]
                                          + ours["server_cpu_s_per_gib"]),
                "hash_bound": floor_cpu / (floor_cpu + HASHES[direction] * sha256),
                "knarr_server_peak": ours["server_peak_rss"],
                "floor_server_peak": floor["server_peak_rss"],
                "client_peak": max(ours["client_peak_rss"], floor["client_peak_rss"]),
                "knarr_client_peak": ours["client_peak_rss"],
                "knarr_client_cpu": ours["client_cpu_s_per_gib"],
                "knarr_server_cpu": ours["server_cpu_s_per_gib"],
                "floor_client_cpu": floor["client_cpu_s_per_gib"],
                "floor_server_cpu": floor["server_cpu_s_per_gib"],
                "error": ours["error"] or floor["error"],
            })
    return out


def table(results: dict[str, Any]) -> str:
    header = ("size", "direction", "n", "knarr MiB/s", "floor MiB/s", "ratio", "best",
              "CPU ratio", "hash bound", "sidecar peak", "floor peak", "client peak",
              "CPU s/GiB knarr c+s", "CPU s/GiB floor c+s")
    lines_: list[tuple[str, ...]] = [header]
    for r in rows(results):
        lines_.append((
            size_label(r["size"]), r["direction"], str(r["repeat"]),
            f"{r['knarr_mib_s']:,.0f}", f"{r['floor_mib_s']:,.0f}", f"{r['ratio']:.2f}",
            f"{r['best_ratio']:.2f}", f"{r['cpu_ratio']:.2f}", f"{r['hash_bound']:.2f}",
            f"{r['knarr_server_peak'] / MiB:.0f} MiB", f"{r['floor_server_peak'] / MiB:.0f} MiB",
            f"{r['knarr_client_peak'] / MiB:.0f} MiB",
            f"{r['knarr_client_cpu']:.2f}+{r['knarr_server_cpu']:.2f}",
            f"{r['floor_client_cpu']:.2f}+{r['floor_server_cpu']:.2f}",
        ))
    widths = [max(len(cells[c]) for cells in lines_) for c in range(len(header))]
    out = []
    for n, cells in enumerate(lines_):
        out.append("  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    errors = [b for b in results["blocks"] if b["error"]]
    for b in errors:
        out.append(f"ERROR {b['impl']} {b['direction']} {size_label(b['size'])}: {b['error']}")
    idle = results["meta"]["idle_rss"]
    out.append("")
    out.append("MiB/s: median of n transfers; ratio: of the medians; best: of the fastest "
               "transfers;\nCPU ratio: floor CPU / knarr CPU, client plus server (what the "
               "ratio tends to when the host has no idle core);\nhash bound: the CPU ratio "
               "if ours cost the floor plus only the SHA-256 passes it must make (SHA-256 "
               f"here: {results['meta']['sha256_cpu_s_per_gib']:.2f} CPU s/GiB).")
    out.append(f"Idle RSS: sidecar {idle['sidecar'] / MiB:.0f} MiB, floor "
               f"{idle['floor'] / MiB:.0f} MiB, client {idle['client'] / MiB:.0f} MiB. "
               "Peaks are VmHWM, reset before each size and direction; the client runs "
               "both clients.")
    return "\n".join(out)


def verdict(results: dict[str, Any]) -> str:
    table_rows = rows(results)
    if not table_rows:
        return "No complete measurements."
    lines_ = []
    worst = min(table_rows, key=lambda r: r["ratio"])
    ok = all(r["ratio"] >= TARGET_RATIO for r in table_rows)
    lines_.append(
        f"Target: knarr >= {TARGET_RATIO:.0%} of the floor at every size: worst "
        f"{worst['ratio']:.0%} ({worst['direction']}, {size_label(worst['size'])}) -> "
        f"{'met' if ok else 'NOT met'}"
    )
    bound = min(table_rows, key=lambda r: r["hash_bound"])
    lines_.append(
        f"  (the hash bound, which caps the ratio when client and sidecar share a core: "
        f"lowest {bound['hash_bound']:.0%}, {bound['direction']}, {size_label(bound['size'])})"
    )
    largest = max(r["size"] for r in table_rows)
    big = [r for r in table_rows if r["size"] == largest]
    peak = max(max(r["knarr_server_peak"], r["knarr_client_peak"]) for r in big)
    lines_.append(
        f"Target: peak memory < {TARGET_PEAK / MiB:.0f} MiB at {size_label(largest)} "
        f"(sidecar and client): {peak / MiB:.0f} MiB -> "
        f"{'met' if peak < TARGET_PEAK else 'NOT met'}"
    )
    if any(b["error"] for b in results["blocks"]):
        lines_.append("Some transfers failed: see ERROR lines.")
    return "\n".join(lines_)


# -------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default=[MiB, 100 * MiB, 2**30],
                        type=lambda s: [parse_size(x) for x in s.split(",")],
                        help="file sizes, comma-separated, K/M/G binary (default 1M,100M,1G)")
    parser.add_argument("--repeat", type=int, default=0,
                        help="transfers per block (default: ~500 MiB worth, 2 to 30)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--profile", metavar="DIR",
                        help="also profile the largest size on both sides into DIR/*.prof")
    parser.add_argument("--role", choices=("sidecar", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for name in ("knarr", "asyncio", "aiohttp"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def temp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="knarr-bench-assets-") as name:
        yield Path(name)


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark, cancelled by SIGTERM as by Ctrl-C (an exception raised from a signal
    handler could be swallowed by aiohttp), so the temp folder and the children go."""
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    with temp_root() as root:
        return await run_benchmark(args, root)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    if args.role:
        # Ctrl-C reaches the whole process group; the parent decides when children stop
        # (they stop when their stdin closes, which also happens if the parent dies).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        folder = Path(args.folder)
        asyncio.run(run_sidecar(folder) if args.role == "sidecar" else run_floor(folder))
        return 0
    args.load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        results = asyncio.run(_main(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress("interrupted; subprocesses stopped and temp files removed")
        return 130
    results["rows"] = rows(results)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return 0
    meta = results["meta"]
    print(f"Assets on loopback, {meta['machine']}, Python {meta['python']}, "
          f"load average {meta['load_before'][0]:.2f} before / "
          f"{meta['load_after'][0]:.2f} after, {meta['date']}\n")
    print(table(results))
    print()
    print(verdict(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
