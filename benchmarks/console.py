"""The operator console under load: how fast a node's events reach the screen, and the CPU
that costs the console and the node.

Three processes, on loopback and Unix sockets only:

* the node: a ``Node`` with a file database and its cockpit on a Unix socket in a
  temporary data folder, as ``knarr serve --headless`` runs it. Before any console
  attaches, a small driver inside it seeds ``--peers`` contacts (20 per k-bucket, ids made
  for their buckets, loopback addresses nobody listens on) through the DHT's own "this
  contact answered" path, and ``--ledger`` provider-signed receipts into the ledger (their
  times spread over the past hour). While streaming, the driver makes ``--rate`` events a
  second: three in four are a new signed receipt booked as a served task books it
  (``Ledger.record``, then the ``task.provided`` event); every fourth replaces a peer
  (``peer.removed`` when the DHT gives up on one, then ``peer.added`` for a newcomer in
  the same bucket), so the table stays at ``--peers``.
* the console: ``KnarrConsole`` on a ``CockpitFeed`` attached to that socket, exactly as
  ``knarr console --socket PATH`` builds it (default tick, re-fetch interval, toasts),
  running in a pseudo-terminal of ``--size`` whose output this script reads and discards,
  with the ``--panel`` on screen: the ledger (newest receipt on top; the default) or
  the peers (5,000 rows sorted by bucket). A subclass here only records
  time stamps: when each event left the feed, when the console handled it, and when the
  next frame was written to the terminal after that.
* this script, which tells the node when to stream, and measures both with psutil.

Measured, in this order:

1. node idle, no console; 2. node streaming, no console; 3. console attached and
   streaming: update latency and the CPU of both; 4. stream stopped and settled: both
   idle, console attached.

* update latency of the shown panel's events (receipts, or peer changes): from the
  event's time stamp in the node (``Event.time``, taken when the node emits it) to the
  first frame the console wrote to its terminal after the shown table took its row in
  ("event in to row shown"; events handled later do not hold it back); also, for
  receipts and for peer changes, to when the console app handled the event (its table
  changes follow with the rest of the burst). p50 / p95 / max, nearest rank.
* console CPU while streaming and idle (process CPU time / wall time; 100 % = one core).
* the node's CPU cost of serving the cockpit: node CPU with the console attached minus
  without it, at the same event rate (and the same, idle).

Targets (issue 7): receipt p95 under 100 ms; console idle under 2 % CPU. The machine's
load average is printed, since other work moves these numbers.

    .venv/bin/python benchmarks/console.py [--peers 5000] [--ledger 5000] [--rate 200]
        [--seconds 20] [--idle-seconds 20] [--size 120x40] [--panel ledger|peers]
        [--json] [--profile DIR]

``--profile DIR`` runs cProfile in the console and, during phase 3, in the node, and
writes ``DIR/console.prof`` and ``DIR/node.prof`` (the numbers of a profiled run are
slower than real; compare them only with each other).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import fcntl
import hashlib
import inspect
import json
import logging
import math
import os
import platform
import pty
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psutil
from children import Child, ChildProfile, stop  # benchmarks/children.py
from rich.console import RenderableType
from textual.screen import Screen

from knarr.tui.app import KnarrConsole
from knarr.tui.feed import CockpitFeed, FeedEvent, FeedItem
from knarr.tui.model import RowChange

HOST = "127.0.0.1"
SHOWN_EVENTS = {"ledger": ("task.provided",), "peers": ("peer.added", "peer.removed")}
"""The events whose rows each panel that can be on screen shows."""
CHILD_TIMEOUT_S = 120.0
SKILLS = ("echo", "summarize", "translate", "ocr", "embed", "classify", "transcode", "search")


def progress(message: str) -> None:
    print(f"[console] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# --------------------------------------------------------------------- child: the node


class Driver:
    """Seeds the node's routing table and ledger, then streams events at a fixed rate."""

    def __init__(self, node: Any, rng: random.Random) -> None:
        from knarr.node.identity import Identity

        self.node = node
        self.rng = rng
        self.requesters = [Identity.from_seed(rng.randbytes(32)) for _ in range(64)]
        self.peers: list[Any] = []
        self.vacant: int | None = None  # the bucket of the peer removed last
        self.sent = 0
        self.late = 0

    def seed_ledger(self, count: int) -> None:
        """``count`` receipts, booked over the past hour, in one transaction."""
        ledger = self.node.ledger
        clock = ledger.clock
        start = time.time() - 3600
        try:
            with self.node.store.transaction():
                for i in range(count):
                    created = start + i * 3600 / max(count, 1)
                    ledger.clock = lambda created=created: created
                    ledger.record(self.receipt(created), role="provided")
        finally:
            ledger.clock = clock

    def seed_peers(self, count: int) -> None:
        """``count`` contacts, ``k`` per bucket from the farthest bucket inwards."""
        from knarr.node.contact import Contact

        dht = self.node.dht
        k = dht.settings.k
        for i in range(count):
            node_id = self.fresh_id(255 - i // k)
            contact = Contact(node_id, f"127.{1 + i // 65536}.{i // 256 % 256}.{i % 256}",
                              20000 + i % 40000)
            dht._offer(contact)  # as when a contact answers us
            self.peers.append(contact)
        assert len(dht.table) == count, f"seeded {len(dht.table)} of {count} peers"

    def fresh_id(self, bucket: int) -> bytes:
        """A node id in ``bucket`` that is not in the table yet."""
        from knarr.node.routing import random_id_in_bucket

        own = self.node.identity.node_id
        while True:
            node_id = random_id_in_bucket(own, bucket, self.rng.randbytes(32))
            if node_id not in self.node.dht.table:
                return node_id

    def receipt(self, at: float) -> Any:
        from knarr.node.economy import sign_receipt, to_micro

        rng = self.rng
        requester = rng.choice(self.requesters)
        text = rng.randbytes(64)
        return sign_receipt(
            self.node.identity, task=rng.randbytes(16), skill=rng.choice(SKILLS),
            price=to_micro(rng.choice((0.0, 0.5, 1.0, 2.0))),
            requester_key=requester.public_key,
            input_hash=hashlib.sha256(text).digest(),
            output_hash=hashlib.sha256(text[::-1]).digest(), time_ms=int(at * 1000),
            outcome="completed" if rng.random() < 0.95 else "failed",
            duration_ms=rng.randint(2, 900),
        )

    def book(self) -> None:
        """A served task's booking: the receipt and its ledger rows, then the event."""
        node = self.node
        receipt = self.receipt(time.time())
        if node.ledger.record(receipt, role="provided"):
            node.events.emit("task.provided", **receipt.to_dict())

    def churn(self) -> None:
        """Drop a peer as the DHT drops one that stops answering; next time, a newcomer
        answers in the same bucket."""
        from knarr.node.contact import Contact
        from knarr.node.routing import bucket_index

        dht = self.node.dht
        own = self.node.identity.node_id
        if self.vacant is None:
            index = self.rng.randrange(len(self.peers))
            gone = self.peers[index]
            self.peers[index] = self.peers[-1]
            self.peers.pop()
            dht._failed(gone, max_failures=1)
            self.vacant = bucket_index(own, gone.node_id)
        else:
            node_id = self.fresh_id(self.vacant)
            n = self.sent
            contact = Contact(node_id, f"127.200.{n // 256 % 256}.{n % 256}",
                              20000 + n % 40000)
            dht._offer(contact)
            self.peers.append(contact)
            self.vacant = None

    async def stream(self, rate: float) -> None:
        """Events on a fixed schedule (``late``: how many were due before the previous
        one was done)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        n = 0
        while True:
            n += 1
            delay = started + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1 / rate:
                self.late += 1
            if n % 4 == 0:
                self.churn()
            else:
                self.book()
            self.sent += 1


async def run_node(folder: Path, peers: int, ledger_rows: int, seed: int) -> None:
    from knarr.node.node import Node

    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    node = Node(HOST, 0, storage=folder / "node.db", cockpit_dir=folder)
    driver = Driver(node, random.Random(seed))
    streaming: asyncio.Task[None] | None = None
    profiling = ChildProfile()
    t0 = time.perf_counter()
    driver.seed_ledger(ledger_rows)
    await node.start()
    try:
        driver.seed_peers(peers)
        answer({"socket": str(folder / "cockpit.sock"), "pid": os.getpid(),
                "node_id": node.node_id, "peers": len(node.dht.table),
                "receipts": node.store.execute("SELECT COUNT(*) FROM receipts")[0][0],
                "seed_s": time.perf_counter() - t0})
        while line := (await commands.readline()).decode().strip():
            verb, _, arg = line.partition(" ")
            if verb == "stream":
                streaming = asyncio.ensure_future(driver.stream(float(arg)))
                answer({"ok": True})
            elif verb == "quiet" and streaming is not None:
                streaming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await streaming
                streaming = None
                answer({"sent": driver.sent, "late": driver.late})
            elif verb == "stats":
                answer({"events": node.events.last_seq, "sent": driver.sent,
                        "peers": len(node.dht.table)})
            elif (reply := profiling.answer(verb, arg)) is not None:
                answer(reply)
            else:
                answer({"ok": False, "error": f"unknown command {line!r}"})
    finally:
        if streaming is not None:
            streaming.cancel()
        await node.stop(grace=1.0)


def answer(value: object) -> None:
    print(json.dumps(value), flush=True)


# ------------------------------------------------------------------ child: the console


class StampedFeed(CockpitFeed):
    """The cockpit feed, noting when each event arrived from the socket."""

    def __init__(self, socket_path: str) -> None:
        super().__init__(socket_path=socket_path)
        self.arrived: dict[int, tuple[str, float, float]] = {}
        """seq → (type, the node's time stamp, when it arrived here)."""

    async def follow(self) -> AsyncIterator[FeedItem]:
        async for item in super().follow():
            if isinstance(item, FeedEvent):
                self.arrived[item.seq] = (item.type, item.time, time.time())
            yield item


class StampedConsole(KnarrConsole):
    """``knarr console`` as it is, reporting when events were applied and then drawn.

    Every frame written to the terminal reports the events applied since the previous
    frame, as ``[seq, type, node stamp, arrived, applied, drawn]``, on ``report``."""

    CSS_PATH = str(Path(inspect.getfile(KnarrConsole)).with_name("knarr.tcss"))

    def __init__(self, feed: StampedFeed, report: IO[str], panel: str) -> None:
        super().__init__(feed)
        self.stamped = feed
        self.report = report
        self.shown = panel
        self.applied: list[list[Any]] = []
        """Handled, their rows not yet in the shown table."""
        self.in_table: list[list[Any]] = []
        """Their rows in the shown table, not yet drawn."""
        self.frames = 0
        self.synced = False

    def _show(self, changes: list[RowChange]) -> None:
        super()._show(changes)
        now = time.time()
        arrived = self.stamped.arrived
        for seq in sorted(s for s in arrived if s <= self.model.seq):
            kind, stamp, came = arrived.pop(seq)
            self.applied.append([seq, kind, stamp, came, now])
        if not self.synced and self.model.rows["peers"]:
            self.synced = True
            self.show_panel(self.shown)
            panel = self.main.panel(self.shown)
            catch_up = panel.catch_up

            def caught_up() -> None:
                # What was handled before the shown table caught up is in it now.
                handled, self.applied = self.applied, []
                catch_up()
                self.in_table += handled

            panel.catch_up = caught_up  # type: ignore[method-assign]
            self._send({"kind": "synced", "t": now,
                        "rows": {p: len(r) for p, r in self.model.rows.items()},
                        "table_rows": panel.table.row_count})

    def _display(self, screen: Screen[Any], renderable: RenderableType | None) -> None:
        super()._display(screen, renderable)
        if renderable is None:
            return
        self.frames += 1
        # Drawn: the first frame after the shown table took the event's row in.
        if self.in_table:
            now = time.time()
            self._send({"kind": "frame", "t": now,
                        "events": [[*a, now] for a in self.in_table]})
            self.in_table = []

    def _on_tick(self) -> None:
        super()._on_tick()
        self._send({"kind": "tick", "t": time.time(), "frames": self.frames,
                    "rows": {p: len(r) for p, r in self.model.rows.items()}})

    def _send(self, value: dict[str, Any]) -> None:
        self.report.write(json.dumps(value) + "\n")
        self.report.flush()


def run_console(socket_path: str, report_fd: int, profile_path: str | None,
                panel: str) -> None:
    report = os.fdopen(report_fd, "w")
    feed = StampedFeed(socket_path)
    app = StampedConsole(feed, report, panel)
    profile = cProfile.Profile() if profile_path else None

    def finish() -> None:
        # The profile first: the app may take a while to get through its queue.
        if profile is not None and profile_path is not None:
            profile.disable()
            profile.dump_stats(profile_path)
        app.exit()

    async def run() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, finish)
        if profile is not None:
            profile.enable()
        try:
            await app.run_async()
        finally:
            await feed.close()

    asyncio.run(run())


# ------------------------------------------------------------------ parent: children


class NodeProcess(Child):
    """The node child, driven by lines on its stdin; it exits when stdin closes."""

    def __init__(self, folder: Path, args: argparse.Namespace) -> None:
        super().__init__(
            [sys.executable, __file__, "--child", "node", "--folder", str(folder),
             "--peers", str(args.peers), "--ledger", str(args.ledger),
             "--seed", str(args.seed)],
            name="node", timeout=CHILD_TIMEOUT_S,
        )
        self.hello = self.read()
        self.pid = int(self.hello["pid"])


class ConsoleProcess:
    """The console child in a pseudo-terminal of ``columns`` × ``rows`` whose output is
    read and counted; its reports arrive on a pipe."""

    def __init__(self, socket_path: str, folder: Path, columns: int, rows: int,
                 profile: str | None, panel: str) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        report_r, report_w = os.pipe()
        env = {k: v for k, v in os.environ.items()
               if k not in ("NO_COLOR", "TEXTUAL_THEME") and not k.startswith("TEXTUAL_")}
        env.update(TERM="xterm-256color", COLORTERM="truecolor", COLUMNS=str(columns),
                   LINES=str(rows))
        command = [sys.executable, __file__, "--child", "console", "--socket", socket_path,
                   "--report-fd", str(report_w), "--panel", panel]
        if profile:
            command += ["--profile-to", profile]
        # Textual draws on stderr: all three are the terminal.
        self.proc = subprocess.Popen(
            command, stdin=slave, stdout=slave, stderr=slave, pass_fds=(report_w,),
            env=env, start_new_session=True,
        )
        os.close(slave)
        os.close(report_w)
        self.master = master
        self.terminal_bytes = 0
        self.tail = b""
        """The last of the terminal output (a traceback, if the console failed)."""
        self.reports: list[dict[str, Any]] = []
        self.synced = threading.Event()
        self._threads = [
            threading.Thread(target=self._drain, daemon=True),
            threading.Thread(target=self._read_reports, args=(report_r,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            self.terminal_bytes += len(chunk)
            self.tail = (self.tail + chunk)[-4000:]

    def _read_reports(self, fd: int) -> None:
        with os.fdopen(fd) as reports:
            for line in reports:
                report = json.loads(line)
                self.reports.append(report)
                if report["kind"] == "synced":
                    self.synced.set()

    def wait_synced(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.synced.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.tail.decode(errors="replace")[-2000:]
                raise RuntimeError(f"the console did not sync (exit {self.proc.poll()}):\n"
                                   f"{tail}")
        return next(r for r in self.reports if r["kind"] == "synced")

    def samples(self, t0: float, t1: float) -> list[list[Any]]:
        """``[seq, type, stamp, arrived, applied, drawn]`` of the events the node
        stamped in ``[t0, t1)``."""
        return [e for r in list(self.reports) if r["kind"] == "frame"
                for e in r["events"] if t0 <= e[2] < t1]

    def close(self) -> None:
        stop(self.proc, first=signal.SIGTERM)
        for thread in self._threads:
            thread.join(timeout=5)
        with contextlib.suppress(OSError):
            os.close(self.master)


# ------------------------------------------------------------------ parent: measuring


def measure_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU % (of one core) of each process over the next ``seconds``."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - t0
    return {name: (cpu_seconds(pid) - before[name]) / elapsed * 100
            for name, pid in pids.items()}


def latency_summary(samples: list[list[Any]], *, drawn: bool) -> dict[str, Any]:
    """p50/p95/max in ms, from the node's stamp to drawn (or to applied)."""
    end = 5 if drawn else 4
    ms = [(s[end] - s[2]) * 1000 for s in samples]
    return {"count": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "max_ms": max(ms, default=math.nan)}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    columns, rows = (int(x) for x in args.size.lower().split("x"))
    folder = Path(tempfile.mkdtemp(prefix="knarr-console-bench-"))
    node: NodeProcess | None = None
    console: ConsoleProcess | None = None
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"load_before": [round(x, 2) for x in os.getloadavg()]}
    try:
        progress(f"seeding a node with {args.peers} peers and {args.ledger} receipts")
        node = NodeProcess(folder, args)
        result["node"] = node.hello
        progress(f"seeded in {node.hello['seed_s']:.1f} s; 1/4 node idle, no console "
                 f"({args.idle_seconds:g} s)")
        time.sleep(args.warmup)
        idle_alone = measure_cpu({"node": node.pid}, args.idle_seconds)

        progress(f"2/4 streaming {args.rate:g} events/s, no console ({args.seconds:g} s)")
        node.ask(f"stream {args.rate}")
        time.sleep(args.warmup)
        stream_alone = measure_cpu({"node": node.pid}, args.seconds)
        result["stream_alone_sent"] = node.ask("quiet")

        progress("3/4 attaching the console")
        console = ConsoleProcess(node.hello["socket"], folder, columns, rows,
                                 str(profile_dir / "console.prof") if profile_dir else None,
                                 args.panel)
        synced = console.wait_synced(CHILD_TIMEOUT_S)
        result["console_synced"] = synced
        time.sleep(args.warmup)
        progress(f"3/4 streaming {args.rate:g} events/s to the console ({args.seconds:g} s)")
        node.ask(f"stream {args.rate}")
        time.sleep(args.warmup)
        if profile_dir is not None:
            node.ask("profile-start")
        t0 = time.time()
        bytes0 = console.terminal_bytes
        stream_attached = measure_cpu({"node": node.pid, "console": console.proc.pid},
                                      args.seconds)
        t1 = time.time()
        terminal_rate = (console.terminal_bytes - bytes0) / (t1 - t0)
        if profile_dir is not None:
            node.ask(f"profile-stop {profile_dir / 'node.prof'}")
        result["stream_attached_sent"] = node.ask("quiet")

        progress(f"4/4 idle, console attached ({args.idle_seconds:g} s)")
        time.sleep(max(args.warmup, 3.0))  # the last re-fetches settle
        bytes1 = console.terminal_bytes
        idle_attached = measure_cpu({"node": node.pid, "console": console.proc.pid},
                                    args.idle_seconds)
        idle_terminal_rate = (console.terminal_bytes - bytes1) / args.idle_seconds
        time.sleep(0.5)
        samples = console.samples(t0, t1 - 0.5)
        # Events the node stamped in the window but the console never drew.
        frames = [r for r in console.reports if r["kind"] == "frame"]
        ticks = (r for r in reversed(console.reports) if r["kind"] == "tick")
        last_tick: dict[str, Any] = next(ticks, {})
    finally:
        if console is not None:
            console.close()
        if node is not None:
            node.close()
        shutil.rmtree(folder, ignore_errors=True)

    receipts = [s for s in samples if s[1] == "task.provided"]
    peers = [s for s in samples if s[1].startswith("peer.")]
    shown = [s for s in samples if s[1] in SHOWN_EVENTS[args.panel]]
    expected = result["stream_attached_sent"]["sent"]
    result.update({
        "args": {k: v for k, v in vars(args).items() if k not in ("child",)},
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "revision": revision(),
        "panel": args.panel,
        "latency_drawn": latency_summary(shown, drawn=True),
        "latency_receipt_applied": latency_summary(receipts, drawn=False),
        "latency_peer_applied": latency_summary(peers, drawn=False),
        "latency_receipt_arrived": latency_summary(
            [[*s[:4], s[3]] for s in receipts], drawn=False),
        "events_in_window": len(samples),
        "events_sent_while_attached": expected,
        "frames": len(frames),
        "final_rows": last_tick.get("rows", {}),
        "cpu": {
            "node_idle_alone": idle_alone["node"],
            "node_stream_alone": stream_alone["node"],
            "node_stream_attached": stream_attached["node"],
            "node_idle_attached": idle_attached["node"],
            "console_stream": stream_attached["console"],
            "console_idle": idle_attached["console"],
            "cockpit_stream": stream_attached["node"] - stream_alone["node"],
            "cockpit_idle": idle_attached["node"] - idle_alone["node"],
        },
        "terminal_bytes_per_s": {"stream": terminal_rate, "idle": idle_terminal_rate},
    })
    return result


def revision() -> str:
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).parent), "describe", "--always",
                              "--dirty"], capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def table(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    cpu = r["cpu"]
    drawn, applied = r["latency_drawn"], r["latency_receipt_applied"]
    peer = r["latency_peer_applied"]
    what = "receipt" if r["panel"] == "ledger" else "peer change"
    return [
        (f"{what} ({r['panel']} panel on screen): node event → row drawn, p50 / p95 / max "
         "(ms)",
         f"{drawn['p50_ms']:.1f} / {drawn['p95_ms']:.1f} / {drawn['max_ms']:.1f}",
         "p95 < 100"),
        ("receipt: node event → handled by the console app, p50 / p95 (ms)",
         f"{applied['p50_ms']:.1f} / {applied['p95_ms']:.1f}", ""),
        ("peer change: node event → handled by the console app, p50 / p95 (ms)",
         f"{peer['p50_ms']:.1f} / {peer['p95_ms']:.1f}", ""),
        ("console CPU, streaming (%)", f"{cpu['console_stream']:.1f}", ""),
        ("console CPU, idle (%)", f"{cpu['console_idle']:.2f}", "< 2"),
        ("node CPU streaming, without / with console (%)",
         f"{cpu['node_stream_alone']:.1f} / {cpu['node_stream_attached']:.1f}", ""),
        ("node CPU serving the cockpit, streaming (% = with − without)",
         f"{cpu['cockpit_stream']:.1f}", ""),
        ("node CPU serving the cockpit, idle (%)", f"{cpu['cockpit_idle']:.2f}", ""),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=5000, help="routing table size (5000)")
    parser.add_argument("--ledger", type=int, default=5000, help="receipts seeded (5000)")
    parser.add_argument("--rate", type=float, default=200.0, help="events a second (200)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="length of each streaming measurement (20)")
    parser.add_argument("--idle-seconds", type=float, default=20.0,
                        help="length of each idle measurement (20)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds before each measurement (2)")
    parser.add_argument("--size", default="120x40", help="the console's terminal (120x40)")
    parser.add_argument("--panel", choices=sorted(SHOWN_EVENTS), default="ledger",
                        help="the panel on screen, whose rows' latency is measured (ledger)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--profile", metavar="DIR",
                        help="cProfile the console and the node into DIR/*.prof")
    parser.add_argument("--child", choices=("node", "console"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    parser.add_argument("--report-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for name in ("knarr", "asyncio"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.child:
        # Ctrl-C reaches the whole process group; the parent decides when children stop
        # (the node when its stdin closes, the console on SIGTERM or when its terminal
        # goes away).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if args.child == "node":
            asyncio.run(run_node(Path(args.folder), args.peers, args.ledger, args.seed))
        else:
            run_console(args.socket, args.report_fd, args.profile_to, args.panel)
        return 0
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = run_benchmark(args)
    except KeyboardInterrupt:
        progress("interrupted; the node, the console and the data folder are gone")
        return 130
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"console benchmark, {result['machine']}, Python {result['python']}, "
          f"{result['revision']}, {result['date']}; {args.peers} peers, {args.ledger} "
          f"receipts, {args.rate:g} events/s, terminal {args.size}; load average "
          f"{' '.join(f'{x:.2f}' for x in result['load_before'])} before, "
          f"{' '.join(f'{x:.2f}' for x in result['load_after'])} after")
    print("| metric | knarr | target |")
    print("|---|---|---|")
    for row in table(result):
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
