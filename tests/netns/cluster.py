"""Node processes on the namespace hosts, and the test's side of their JSON-line protocol."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.netns.node_process import PORT
from tests.netns.topology import Host, Topology

ROOT = Path(__file__).resolve().parents[2]
REPLY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.05


class NodeProcess:
    """A ``tests.netns.node_process`` running inside ``host``'s namespace."""

    def __init__(self, host: Host, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.host = host
        self.proc = proc
        self.log = log
        self.node_id = ""

    @property
    def address(self) -> str:
        return f"{self.host.address}:{PORT}"

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def _read(self) -> dict[str, Any]:
        assert self.proc.stdout
        async with asyncio.timeout(REPLY_TIMEOUT):
            line = await self.proc.stdout.readline()
        if not line:
            raise AssertionError(
                f"h{self.host.index} exited ({self.proc.returncode}):\n{self.log_tail()}"
            )
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise AssertionError(f"h{self.host.index}: {reply['error']}")
        return reply

    async def wait_ready(self) -> None:
        self.node_id = str((await self._read())["node_id"])

    async def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin
        self.proc.stdin.write(json.dumps({"op": op, **fields}).encode() + b"\n")
        await self.proc.stdin.drain()
        return await self._read()

    async def find(self, name: str | None = None, *, tag: str | None = None) -> list[str]:
        """``"<provider id>:<skill>"`` for every record found, sorted."""
        reply = await self.ask("find", **({"name": name} if tag is None else {"tag": tag}))
        return list(reply["found"])

    async def announce(self, name: str, *tags: str) -> str:
        """Announce a new skill; returns the ``"<provider id>:<skill>"`` others should find."""
        await self.ask("announce", name=name, tags=list(tags))
        return f"{self.node_id}:{name}"

    async def stats(self) -> dict[str, Any]:
        """``table``: the ``host:port`` of every routing-table contact; ``records``: how
        many (key, record) entries the node stores; datagram and timeout counters."""
        return await self.ask("stats")

    async def peers(self) -> list[str]:
        return list((await self.stats())["table"])

    async def stop(self) -> None:
        """Ask the node to quit; kill it if it has not within a few seconds."""
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                if self.running:
                    await self.ask("quit")
        except (AssertionError, OSError, TimeoutError, ValueError):
            pass  # it died, hangs or is confused: killed below
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def _spawn(
    host: Host, log_dir: Path, bootstrap: str | None, impairment: Sequence[str]
) -> NodeProcess:
    log = log_dir / f"h{host.index}.log"
    command = [
        "ip", "netns", "exec", host.namespace,
        sys.executable, "-m", "tests.netns.node_process",
        "--index", str(host.index), "--host", host.address, *impairment,
    ]
    if bootstrap:
        command += ["--bootstrap", bootstrap]
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )
    return NodeProcess(host, proc, log)


@asynccontextmanager
async def running_nodes(
    topology: Topology,
    log_dir: Path,
    *,
    loss: float = 0.0,
    delay_ms: tuple[float, float] | None = None,
) -> AsyncIterator[list[NodeProcess]]:
    """One node per host; host 0 starts first and the rest join through it.
    Every process is stopped on exit, whatever happened."""
    impairment: list[str] = []
    if loss:
        impairment += ["--loss", str(loss)]
    if delay_ms:
        impairment += ["--delay-ms", *(str(ms) for ms in delay_ms)]
    nodes: list[NodeProcess] = []
    try:
        first, *rest = topology.hosts
        nodes.append(await _spawn(first, log_dir, None, impairment + ["--seed", "0"]))
        await nodes[0].wait_ready()
        for host in rest:
            seed = ["--seed", str(host.index)]
            nodes.append(await _spawn(host, log_dir, nodes[0].address, impairment + seed))
        async with asyncio.TaskGroup() as group:  # one failing cancels the other waits
            for node in nodes[1:]:
                group.create_task(node.wait_ready())
        yield nodes
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


async def eventually(
    problems: Callable[[], Awaitable[list[str]]], *, timeout: float, what: str
) -> float:
    """Run ``problems()`` until it reports none; returns the seconds that took.
    Fails with the last report if ``timeout`` passes first."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        found = await problems()
        if not found:
            return loop.time() - start
        if loop.time() - start > timeout:
            raise AssertionError(f"{what} not reached in {timeout:.0f} s: {found[:10]}")
        await asyncio.sleep(POLL_INTERVAL)
