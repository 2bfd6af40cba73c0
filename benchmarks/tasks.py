"""Knarr's task channel on loopback, beside a plain asyncio TCP echo measured in the same run.

Three processes: a provider (a ``Node`` serving an ``echo`` skill, as ``knarr serve``
would), a floor server (a minimal asyncio echo with 4-byte length framing and no signing
or sealing), and this script, which is the client of both. Measured, for each payload:

* the floor: round trips over one connection with 1 and 64 requests in flight (the same
  shape as Knarr's one multiplexed connection per provider), and over 64 connections
  with one request on each (the floor at concurrency 64 that the target refers to);
* ``node.client.call(...)`` to the provider after one ``find_skills`` (no DHT in the
  loop), at concurrency 1 and 64: every request signed, verified, sealed and opened;
* ``node.request(...)`` (a DHT lookup, then the call) at concurrency 1;
* a cold ``knarr request`` (process start to the printed output), and ``knarr --version``
  (interpreter start and imports) for comparison, against the same provider.

Reported: requests per second, p50/p99 latency, CPU time per request on each side (and
on the provider's event-loop thread alone), and Knarr/floor ratios. Each measurement runs
``--warmup`` seconds before its ``--seconds``. The provider keeps a ``node.db`` in a
temporary folder, as ``knarr serve`` does; where the node has an economy, the skill keeps
its default price and the credit limit is raised so that no task is refused: every task
is charged, receipted and booked as usual. The machine's load average is printed, since
other work on the machine moves these numbers.

    .venv/bin/python benchmarks/tasks.py [--seconds 5] [--payloads 100,4096] [--json]
                                         [--cold-runs 10] [--profile DIR]

``--profile DIR`` adds one extra run of the 64-way call measurement with cProfile on
both sides (its numbers are not reported) and writes ``DIR/provider.prof`` and
``DIR/client.prof``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import inspect
import json
import logging
import math
import os
import platform
import signal
import struct
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from children import Child, ChildProfile, started  # benchmarks/children.py

HOST = "127.0.0.1"
SKILL = "echo"
CALL_TIMEOUT_S = 10.0
COLD_TIMEOUT_S = 30.0
CHILD_TIMEOUT_S = 30.0
FRAME = struct.Struct(">I")
CREDIT_LIMIT = 1e9


def payload_of(size: int) -> dict[str, str]:
    """``{"text": "x" * size}``: the echo skill's input, and what it returns."""
    return {"text": "x" * size}


def progress(message: str) -> None:
    print(f"[tasks] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------- child: provider


async def echo(data: dict[str, Any]) -> dict[str, Any]:
    """The skill ``knarr init`` generates."""
    return {"text": data["text"]}


async def control_lines() -> asyncio.StreamReader:
    """This process's stdin as a stream: the parent's commands, EOF when it is gone."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def answer(value: object) -> None:
    print(json.dumps(value), flush=True)


async def obey(commands: asyncio.StreamReader, stats: Callable[[], dict[str, Any]]) -> None:
    """Serve the parent's commands until stdin closes: ``stats``, ``profile-start``,
    ``profile-stop PATH``."""
    profiling = ChildProfile()
    while line := (await commands.readline()).decode().strip():
        verb, _, arg = line.partition(" ")
        if verb == "stats":
            answer(stats())
        elif (reply := profiling.answer(verb, arg)) is not None:
            answer(reply)
        else:
            answer({"ok": False, "error": f"unknown command {line!r}"})


def knarr_location() -> str:
    import knarr

    return str(Path(knarr.__file__).parent)


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def run_provider(folder: str) -> None:
    from knarr.node.node import Node

    commands = await control_lines()
    # A database file, as `knarr serve` keeps: whatever the node writes per task is measured.
    options: dict[str, Any] = {"storage": Path(folder) / "node.db"}
    if "economy" in inspect.signature(Node).parameters:
        from knarr.config import EconomyConfig

        # Tasks are charged and booked as usual; the limit only keeps the run going.
        options["economy"] = EconomyConfig(credit_limit=CREDIT_LIMIT)
    node = Node(HOST, 0, **options)
    await node.start()
    try:
        node.register_handler(SKILL, echo)
        await node.announce({
            "name": SKILL,
            "description": "Echoes input text back",
            "tags": ["example"],
            "input_schema": {"text": "string"},
            "output_schema": {"text": "string"},
        })

        def stats() -> dict[str, Any]:
            return {
                "cpu_s": cpu_seconds(),
                "loop_cpu_s": time.thread_time(),
                "completed": node.tasks.completed,
                "refused": node.tasks.refused,
                "failed": node.tasks.failed,
                "dht_rate_limited": node.dht.stats.rate_limited,
                "dht_received": node.dht.stats.received,
            }

        answer({"port": node.port, "pid": os.getpid(), "knarr": knarr_location()})
        await obey(commands, stats)
    finally:
        await node.stop(grace=1.0)


# ---------------------------------------------------------------------- child: floor


async def run_floor() -> None:
    """Echo each length-prefixed frame back as it is: no decoding, signing or sealing."""
    commands = await control_lines()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(FRAME.size)
                body = await reader.readexactly(FRAME.unpack(header)[0])
                writer.write(header + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    async with server:
        answer({"port": server.sockets[0].getsockname()[1], "pid": os.getpid()})
        await obey(commands, lambda: {"cpu_s": cpu_seconds(), "loop_cpu_s": time.thread_time()})


# ---------------------------------------------------------------- parent: children


@contextlib.contextmanager
def children(*roles: str) -> Iterator[list[Child]]:
    """The named server processes, sharing a temporary folder, ready."""
    with tempfile.TemporaryDirectory(prefix="knarr-bench-") as folder:

        def make(role: str) -> Child:
            argv = [sys.executable, __file__, "--role", role, "--folder", folder]
            return Child(argv, name=role, timeout=CHILD_TIMEOUT_S)

        with started(make, roles) as running:
            yield running


# ------------------------------------------------------------------ parent: measuring


@dataclass
class Measurement:
    """One closed-loop measurement: ``concurrency`` workers, each awaiting its reply
    before sending the next request."""

    impl: str
    payload: int
    concurrency: int
    connections: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    client_cpu_us: float
    server_cpu_us: float
    server_loop_cpu_us: float
    first_error: str = ""
    server: dict[str, Any] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


Call = Callable[[int], Awaitable[None]]


async def closed_loop(call: Call, concurrency: int, seconds: float) -> tuple[
    list[float], int, str, float
]:
    """Run ``call(worker)`` back to back in ``concurrency`` workers for ``seconds``.
    Returns the latencies, the error count, the first error and the elapsed time."""
    latencies: list[float] = []
    errors = 0
    first_error = ""
    stop_at = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal errors, first_error
        while (started := time.perf_counter()) < stop_at:
            try:
                await call(i)
            except Exception as exc:
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i in range(concurrency):
            tg.create_task(worker(i))
    return latencies, errors, first_error, time.perf_counter() - started


async def measure(
    impl: str, call: Call, *, payload: int, concurrency: int, connections: int,
    server: Child, args: argparse.Namespace, server_stats: bool = False,
) -> Measurement:
    progress(f"{impl}, {payload} B, concurrency {concurrency}: warm-up {args.warmup:g} s")
    await closed_loop(call, concurrency, args.warmup)
    progress(f"{impl}, {payload} B, concurrency {concurrency}: measuring {args.seconds:g} s")
    before = server.ask("stats")
    client_before = cpu_seconds()
    latencies, errors, first_error, elapsed = await closed_loop(call, concurrency, args.seconds)
    client_cpu = cpu_seconds() - client_before
    after = server.ask("stats")
    done = len(latencies)
    ms = [s * 1000 for s in latencies]
    extra = {
        k: after[k] - before[k] for k in after if not k.endswith("cpu_s")
    } if server_stats else {}

    def per_request(seconds: float) -> float:
        return seconds / done * 1e6 if done else math.nan

    result = Measurement(
        impl=impl, payload=payload, concurrency=concurrency, connections=connections,
        requests=done, errors=errors, seconds=elapsed, rps=done / elapsed,
        p50_ms=percentile(ms, 50), p99_ms=percentile(ms, 99),
        mean_ms=sum(ms) / done if done else math.nan,
        client_cpu_us=per_request(client_cpu),
        server_cpu_us=per_request(after["cpu_s"] - before["cpu_s"]),
        server_loop_cpu_us=per_request(after["loop_cpu_s"] - before["loop_cpu_s"]),
        first_error=first_error, server=extra,
    )
    note = f", {errors} errors ({first_error})" if errors else ""
    progress(f"  {result.rps:,.0f} req/s, p50 {result.p50_ms:.3f} ms, "
             f"p99 {result.p99_ms:.3f} ms{note}")
    return result


class FloorConnection:
    """One TCP connection to the floor server; replies come back in order, so
    pipelined requests are matched first in, first out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.waiting: deque[asyncio.Future[bytes]] = deque()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, port: int) -> FloorConnection:
        return cls(*await asyncio.open_connection(HOST, port))

    async def _read(self) -> None:
        try:
            while True:
                header = await self.reader.readexactly(FRAME.size)
                body = await self.reader.readexactly(FRAME.unpack(header)[0])
                self.waiting.popleft().set_result(body)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            for future in self.waiting:
                future.set_exception(ConnectionError(f"floor connection lost: {exc}"))

    async def call(self, frame: bytes) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.writer.write(frame)
        await self.writer.drain()
        return await future

    async def close(self) -> None:
        self.writer.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await self.task


async def floor_measurements(
    server: Child, payload: int, args: argparse.Namespace, concurrency: int,
) -> list[Measurement]:
    body = json.dumps(payload_of(payload)).encode()
    frame = FRAME.pack(len(body)) + body
    shapes = [1] if concurrency == 1 else [1, concurrency]  # connections
    results = []
    for connections in shapes:
        async with floor_connections(server.port, connections) as conns:
            results.append(await measure(
                "floor, 1 connection" if connections == 1 else f"floor, {connections} conns",
                floor_call(conns, frame, body), payload=payload, concurrency=concurrency,
                connections=connections, server=server, args=args,
            ))
    return results


@contextlib.asynccontextmanager
async def floor_connections(port: int, count: int) -> AsyncIterator[list[FloorConnection]]:
    """``count`` connections to the floor server, all closed afterwards."""
    conns = [await FloorConnection.open(port) for _ in range(count)]
    try:
        yield conns
    finally:
        for conn in conns:
            await conn.close()


def floor_call(conns: list[FloorConnection], frame: bytes, body: bytes) -> Call:
    """Worker ``i`` sends on connection ``i`` modulo their number."""

    async def call(i: int) -> None:
        if await conns[i % len(conns)].call(frame) != body:
            raise AssertionError("the floor echoed something else")

    return call


@dataclass
class ColdRuns:
    """Wall-clock times of whole ``knarr`` processes."""

    label: str
    command: str
    runs: int
    failures: int
    p50_ms: float
    min_ms: float
    max_ms: float
    first_failure: str = ""


async def paired(
    floor: Child, call: Call, payload: int, args: argparse.Namespace,
) -> dict[str, Any]:
    """The target's comparison (concurrency 64; the floor over 64 connections) measured
    in alternating slices, the order swapped every round, so that both see the same
    machine: on a shared VM the CPU's speed swings by tens of per cent within a minute,
    and a swing between two back-to-back measurements moves their ratio as much."""
    body = json.dumps(payload_of(payload)).encode()
    frame = FRAME.pack(len(body)) + body
    done = {"floor": 0, "knarr": 0}
    spent = {"floor": 0.0, "knarr": 0.0}
    rounds: list[float] = []
    progress(f"paired: floor (64 conns) and knarr client.call, {payload} B, concurrency 64, "
             f"{args.pairs} rounds of {args.slice:g} s each")
    async with floor_connections(floor.port, 64) as conns:
        floor_calls = floor_call(conns, frame, body)
        for n in range(args.pairs):
            order = [("floor", floor_calls), ("knarr", call)]
            rate = {}
            for name, fn in order if n % 2 == 0 else order[::-1]:
                latencies, errors, first_error, elapsed = await closed_loop(fn, 64, args.slice)
                if errors:
                    raise RuntimeError(f"paired {name}: {errors} errors ({first_error})")
                done[name] += len(latencies)
                spent[name] += elapsed
                rate[name] = len(latencies) / elapsed
            rounds.append(rate["knarr"] / rate["floor"])
    floor_rps, knarr_rps = done["floor"] / spent["floor"], done["knarr"] / spent["knarr"]
    progress(f"  paired ratio {knarr_rps / floor_rps:.1%} "
             f"(rounds {min(rounds):.1%}-{max(rounds):.1%})")
    return {
        "payload": payload, "concurrency": 64, "rounds": args.pairs, "slice_s": args.slice,
        "floor_rps": floor_rps, "knarr_rps": knarr_rps, "ratio": knarr_rps / floor_rps,
        "round_ratios": rounds,
    }


async def time_process(argv: list[str], done_when: Callable[[str], bool]) -> tuple[float, str]:
    """Seconds from spawning ``argv`` until a stdout line satisfies ``done_when``, and
    the output (raises if the process exits first or fails)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    elapsed: float | None = None
    try:
        async with asyncio.timeout(COLD_TIMEOUT_S):
            while line := (await proc.stdout.readline()).decode():
                lines.append(line)
                if elapsed is None and done_when(line):
                    elapsed = time.perf_counter() - started
            stderr = (await proc.stderr.read()).decode()
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = "".join(lines)
    if code != 0 or elapsed is None:
        raise RuntimeError(f"exit {code}: {(output + stderr).strip()[-300:]}")
    return elapsed, output


async def cold_runs(label: str, argv: list[str], done_when: Callable[[str], bool],
                    runs: int) -> ColdRuns:
    progress(f"{label}: {runs} runs")
    times: list[float] = []
    failures: list[str] = []
    await time_process(argv, done_when)  # warm the page cache and .pyc files
    for _ in range(runs):
        try:
            seconds, _ = await time_process(argv, done_when)
            times.append(seconds * 1000)
        except RuntimeError as exc:
            failures.append(str(exc))
    result = ColdRuns(
        label=label, command=" ".join(argv), runs=runs, failures=len(failures),
        p50_ms=percentile(times, 50), min_ms=min(times, default=math.nan),
        max_ms=max(times, default=math.nan), first_failure=failures[0] if failures else "",
    )
    progress(f"  p50 {result.p50_ms:.0f} ms (min {result.min_ms:.0f}, max {result.max_ms:.0f})")
    return result


def knarr_command() -> list[str]:
    script = Path(sys.executable).parent / "knarr"
    return [str(script)] if script.exists() else [sys.executable, "-m", "knarr.cli.main"]


async def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from knarr.node.dht import DhtSettings
    from knarr.node.node import Node

    measurements: list[Measurement] = []
    cold: list[ColdRuns] = []
    profiles: dict[str, str] = {}
    progress("starting the provider and the floor server")
    with children("provider", "floor") as (provider, floor):
        provider_knarr = provider.hello["knarr"]
        node = Node(HOST, 0, settings=DhtSettings(read_only=True))
        await node.start()
        try:
            await node.join([f"{HOST}:{provider.port}"])
            records = await node.find_skills(SKILL)
            if not records:
                raise RuntimeError("the provider's echo skill was not found")
            record = records[0]

            def knarr_call(data: dict[str, str]) -> Call:
                async def call(i: int) -> None:
                    reply: Any = await node.client.call(
                        record.host, record.port, record.public_key, SKILL, data,
                        timeout=CALL_TIMEOUT_S,
                    )
                    # A dict of the output, or (with the economy) a reply that carries it.
                    if getattr(reply, "output", reply) != data:
                        raise AssertionError("the provider echoed something else")
                return call

            for size in args.payloads:
                call = knarr_call(payload_of(size))
                for concurrency in (1, 64):
                    measurements += await floor_measurements(floor, size, args, concurrency)
                    measurements.append(await measure(
                        "knarr client.call", call, payload=size, concurrency=concurrency,
                        connections=1, server=provider, args=args, server_stats=True,
                    ))

            pair = None
            if args.pairs:
                pair = await paired(floor, knarr_call(payload_of(args.payloads[0])),
                                    args.payloads[0], args)

            data = payload_of(args.payloads[0])

            async def full_request(i: int) -> None:
                out = await node.request(SKILL, data, timeout=CALL_TIMEOUT_S)
                if out != data:
                    raise AssertionError("the provider echoed something else")

            measurements.append(await measure(
                "knarr node.request", full_request, payload=args.payloads[0], concurrency=1,
                connections=1, server=provider, args=args, server_stats=True,
            ))

            if args.cold_runs:
                knarr = knarr_command()
                text = json.dumps(data)
                cold.append(await cold_runs(
                    "cold `knarr request` (process start to the output printed)",
                    [*knarr, "request", "--bootstrap", f"{HOST}:{provider.port}",
                     "--skill", SKILL, "--input", text, "--timeout", "10"],
                    lambda line: line.strip().startswith("text: "), args.cold_runs,
                ))
                cold.append(await cold_runs(
                    "`knarr --version` (interpreter start and imports)",
                    [*knarr, "--version"], lambda line: "knarr" in line, args.cold_runs,
                ))

            if args.profile:
                profiles = await profiled_run(
                    Path(args.profile), provider, knarr_call(payload_of(args.payloads[0])),
                    args,
                )
        finally:
            await node.stop(grace=0)

    return {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {platform.system()}",
            "load_before": args.load_before,
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "command": " ".join(["benchmarks/tasks.py", *sys.argv[1:]]),
            "knarr": knarr_location(),
            "provider_knarr": provider_knarr,
            "seconds": args.seconds,
            "warmup": args.warmup,
        },
        "measurements": [asdict(m) for m in measurements],
        "paired": pair,
        "cold": [asdict(c) for c in cold],
        "profiles": profiles,
    }


async def profiled_run(directory: Path, provider: Child, call: Call,
                       args: argparse.Namespace) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    server_path = str((directory / "provider.prof").resolve())
    client_path = directory / "client.prof"
    progress(f"profiling 64-way calls for {args.seconds:g} s (numbers not reported)")
    await closed_loop(call, 64, args.warmup)
    provider.ask("profile-start")
    profile = cProfile.Profile()
    profile.enable()
    try:
        latencies, _, _, elapsed = await closed_loop(call, 64, args.seconds)
    finally:
        profile.disable()
        provider.ask(f"profile-stop {server_path}")
    profile.dump_stats(client_path)
    progress(f"  {len(latencies) / elapsed:,.0f} req/s under cProfile; "
             f"wrote {server_path} and {client_path}")
    return {"provider": server_path, "client": str(client_path)}


# ------------------------------------------------------------------------------ report


def find(results: dict[str, Any], impl: str, payload: int, concurrency: int) -> dict[str, Any]:
    for m in results["measurements"]:
        if (m["impl"], m["payload"], m["concurrency"]) == (impl, payload, concurrency):
            return dict(m)
    raise KeyError((impl, payload, concurrency))


def ratios(results: dict[str, Any], payloads: list[int]) -> list[dict[str, Any]]:
    """Knarr's client.call against each floor of the same payload and concurrency."""
    rows = []
    for m in results["measurements"]:
        if not m["impl"].startswith("floor"):
            continue
        ours = find(results, "knarr client.call", m["payload"], m["concurrency"])
        rows.append({
            "payload": m["payload"], "concurrency": m["concurrency"], "floor": m["impl"],
            "throughput": ours["rps"] / m["rps"], "p50": ours["p50_ms"] / m["p50_ms"],
        })
    return rows


def table(results: dict[str, Any], payloads: list[int]) -> str:
    header = ("payload", "conc", "what", "req/s", "p50 ms", "p99 ms", "errors",
              "client CPU µs/req", "server CPU µs/req", "server loop µs/req")
    rows: list[tuple[str, ...]] = [header]
    for m in results["measurements"]:
        rows.append((
            f"{m['payload']} B", str(m["concurrency"]), m["impl"], f"{m['rps']:,.0f}",
            f"{m['p50_ms']:.3f}", f"{m['p99_ms']:.3f}", str(m["errors"]),
            f"{m['client_cpu_us']:.0f}", f"{m['server_cpu_us']:.0f}",
            f"{m['server_loop_cpu_us']:.0f}",
        ))
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(
            cell.rjust(w) if i >= 3 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", "knarr client.call / floor (throughput: higher is better; p50: lower is):"]
    for ratio in ratios(results, payloads):
        lines.append(
            f"  {ratio['payload']} B, concurrency {ratio['concurrency']}, vs {ratio['floor']}: "
            f"throughput {ratio['throughput']:.3f}, p50 {ratio['p50']:.2f}x"
        )
    if results["cold"]:
        lines.append("")
        for c in results["cold"]:
            fails = f", {c['failures']} failed: {c['first_failure']}" if c["failures"] else ""
            lines.append(
                f"{c['label']}: p50 {c['p50_ms']:.0f} ms "
                f"(min {c['min_ms']:.0f}, max {c['max_ms']:.0f}, {c['runs']} runs){fails}"
            )
    return "\n".join(lines)


def verdict(results: dict[str, Any], payloads: list[int]) -> str:
    """The issue's target compares Knarr at concurrency 64 with the floor at concurrency
    64 as the issue describes it ("~61,000/s over 64": 64 connections, one request on
    each). The verdict rests on the paired measurement (alternating slices, see
    :func:`paired`) when there is one, else on the two back-to-back measurements. The
    floor pipelining 64 requests on one connection is faster still; its ratio is
    printed beside it, stricter than the target."""
    at64 = {m["impl"]: m for m in results["measurements"]
            if m["impl"].startswith("floor") and m["concurrency"] == 64
            and m["payload"] == payloads[0]}
    ours = find(results, "knarr client.call", payloads[0], 64)
    pair = results.get("paired")
    lines = []
    if pair:
        share = pair["ratio"]
        lines.append(
            f"Target: knarr at concurrency 64 >= 10 % of the floor at concurrency 64 "
            f"(64 conns, {pair['payload']} B), paired in {pair['rounds']} alternating rounds "
            f"of {pair['slice_s']:g} s: {share:.1%} (rounds {min(pair['round_ratios']):.1%}-"
            f"{max(pair['round_ratios']):.1%}) -> {'met' if share >= 0.10 else 'NOT met'}"
        )
    for impl, floor in sorted(at64.items(), key=lambda item: item[1]["connections"], reverse=True):
        share = ours["rps"] / floor["rps"]
        if floor["connections"] == 1:
            lines.append(f"  (stricter, not the target: {share:.1%} of the floor over one "
                         "connection with 64 requests pipelined on it)")
        elif pair:
            lines.append(f"  (measured back to back instead: {share:.1%} of the floor over "
                         f"{floor['connections']} connections)")
        else:
            lines.append(
                f"Target: knarr at concurrency 64 >= 10 % of the floor at concurrency 64 "
                f"({impl}, {payloads[0]} B): {share:.1%} -> {'met' if share >= 0.10 else 'NOT met'}"
            )
    for c in results["cold"]:
        if " request " in c["command"]:
            ok = c["p50_ms"] < 1000 and not c["failures"]
            lines.append(f"Target: cold knarr request < 1 s: p50 {c['p50_ms']:.0f} ms -> "
                         f"{'met' if ok else 'NOT met'}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="length of each measurement (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="warm-up before each measurement (default 1)")
    parser.add_argument("--payloads", default=[100, 4096],
                        type=lambda s: [int(x) for x in s.split(",")],
                        help="lengths of the echoed text, comma-separated (default 100,4096)")
    parser.add_argument("--cold-runs", type=int, default=10,
                        help="cold `knarr request` runs; 0 to skip (default 10)")
    parser.add_argument("--pairs", type=int, default=8,
                        help="rounds of the paired measurement behind the verdict: the "
                             "floor and knarr at concurrency 64 in alternating slices; 0 to "
                             "skip (default 8)")
    parser.add_argument("--slice", type=float, default=2.0,
                        help="length of each paired slice in seconds (default 2)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--profile", metavar="DIR",
                        help="also profile 64-way calls on both sides into DIR/*.prof")
    parser.add_argument("--role", choices=("provider", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for name in ("knarr", "asyncio"):
        logging.getLogger(name).setLevel(logging.ERROR)


def raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    if args.role:
        # Ctrl-C reaches the whole process group; the parent decides when children stop
        # (they stop when their stdin closes, which also happens if the parent dies).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        asyncio.run(run_provider(args.folder) if args.role == "provider" else run_floor())
        return 0
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    args.load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        results = asyncio.run(run_benchmark(args))
    except KeyboardInterrupt:
        progress("interrupted; subprocesses stopped")
        return 130
    results["ratios"] = ratios(results, args.payloads)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return 0
    meta = results["meta"]
    print(f"Tasks on loopback, {meta['machine']}, Python {meta['python']}, "
          f"{args.seconds:g} s per measurement after {args.warmup:g} s warm-up, "
          f"load average {meta['load_before'][0]:.2f} before / "
          f"{meta['load_after'][0]:.2f} after, {meta['date']}\n")
    print(table(results, args.payloads))
    print()
    print(verdict(results, args.payloads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
