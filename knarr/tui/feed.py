"""How the console gets its data: one :class:`Feed` interface, two sources behind it.

:class:`CockpitFeed` talks to a node's cockpit (a Unix socket, or TCP with a bearer
token), reconnects by itself with backoff and resumes the event stream from the last
sequence number it saw. :class:`RecordedFeed` replays a JSON-lines recording of the same
data (snapshots and events), deterministically and without reading the wall clock; it
drives the tests, the screenshots and ``knarr console --demo``.

A feed's :meth:`Feed.follow` yields, in order: :class:`Link` (the connection state
changed), :class:`Synced` (a full set of snapshots, after connecting or when the node's
event ring no longer holds what we missed), :class:`FeedEvent` (one cockpit event) and
:class:`Heartbeat` (still connected, nothing new). No Textual here.
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

import aiohttp

from knarr.errors import KnarrError

SNAPSHOTS = ("status", "peers", "skills", "demand", "reputation", "ledger", "recipes",
             "watchman")
"""What a full sync fetches: ``GET /v1/<name>`` for each."""

RECORDING_FORMAT = 1


class CockpitUnavailable(KnarrError):
    """There is no cockpit to attach to at the given place."""


class CockpitRefused(KnarrError):
    """The cockpit answered but refused us (a wrong token, another user's socket)."""


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    REFUSED = "refused"
    RECORDED = "recorded"


@dataclass(frozen=True, slots=True)
class Link:
    """The connection state, and why (for the header and the disconnected banner)."""

    state: LinkState
    detail: str = ""
    retry_in: float | None = None

    @property
    def live(self) -> bool:
        return self.state in (LinkState.CONNECTED, LinkState.RECORDED)


@dataclass(frozen=True, slots=True)
class Synced:
    """Every snapshot, fetched after event ``seq``, at ``at`` (seconds since the epoch)."""

    snapshots: Mapping[str, Any]
    seq: int
    at: float


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One cockpit event, as ``/v1/events`` sends it."""

    seq: int
    time: float
    type: str
    data: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FeedEvent:
        return cls(int(raw["seq"]), float(raw["time"]), str(raw["type"]),
                   dict(raw.get("data") or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "type": self.type, "data": dict(self.data)}


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Still connected at ``at``; nothing happened."""

    at: float


FeedItem = Link | Synced | FeedEvent | Heartbeat


def backoff_delay(attempt: int, *, base: float = 0.25, cap: float = 5.0) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0-based): doubling, capped."""
    return float(min(cap, base * (2 ** min(attempt, 30))))


class Feed(ABC):
    """Where the console's data comes from."""

    label: str = ""
    """Where the feed is attached, for the header (a socket path, ``host:port``, …)."""

    def __init__(self) -> None:
        self.link = Link(LinkState.CONNECTING)
        self.last_seq = 0
        """The resume point: the sequence number of the last event delivered."""

    @abstractmethod
    def clock(self) -> float:
        """The time the feed's data should be judged against (ages, "updated Ns ago")."""

    @abstractmethod
    async def fetch(self, name: str) -> Any:
        """One snapshot (one of :data:`SNAPSHOTS`), as the cockpit returns it."""

    async def fetch_dated(self, name: str) -> tuple[Any, float]:
        """One snapshot and the time it was taken."""
        data = await self.fetch(name)
        return data, self.clock()

    async def fetch_all(self) -> Synced:
        """Every snapshot, with the sequence number they are at least as new as."""
        status = await self.fetch("status")
        seq = int(status.get("last_event", 0)) if isinstance(status, dict) else 0
        snapshots: dict[str, Any] = {"status": status}
        for name in SNAPSHOTS[1:]:
            snapshots[name] = await self.fetch(name)
        return Synced(snapshots, seq, self.clock())

    @abstractmethod
    def follow(self) -> AsyncIterator[FeedItem]:
        """Link changes, syncs and events, in order, until :meth:`close`."""

    @abstractmethod
    async def call(self, skill: str, data: Mapping[str, Any], *,
                   timeout: float = 30.0) -> dict[str, Any]:
        """Run ``skill`` on the network through the node (``POST /v1/call``)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop following and release connections."""


# ---------------------------------------------------------------------- the cockpit


class CockpitFeed(Feed):
    """A node's cockpit, over its Unix socket or over TCP with a bearer token."""

    def __init__(
        self,
        *,
        socket_path: str | Path | None = None,
        host: str | None = None,
        port: int | None = None,
        token: str | None = None,
        clock: Callable[[], float] = time.time,
        heartbeat: float = 5.0,
        backoff_base: float = 0.25,
        backoff_cap: float = 5.0,
        request_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        if (socket_path is None) == (host is None):
            raise ValueError("give either socket_path or host and port")
        self.socket_path = Path(socket_path) if socket_path is not None else None
        self.host, self.port, self.token = host, port, token
        self.label = str(self.socket_path) if self.socket_path else f"{host}:{port}"
        self._clock = clock
        self.heartbeat = heartbeat
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.request_timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None
        self._node_id: str | None = None
        self._started = 0.0
        self._closed = False

    def clock(self) -> float:
        return self._clock()

    @property
    def _base(self) -> str:
        return "http://cockpit" if self.socket_path else f"http://{self.host}:{self.port}"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector: aiohttp.BaseConnector = (
                aiohttp.UnixConnector(path=str(self.socket_path)) if self.socket_path
                else aiohttp.TCPConnector()
            )
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(
                connector=connector, headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.request_timeout),
            )
        return self._session

    def _refused(self, status: int) -> CockpitRefused:
        if status == 401:
            where = f"{self.host}:{self.port}"
            return CockpitRefused(
                f"the cockpit at {where} refused the token; pass the one in the node's "
                "data folder (cockpit.token) with --token"
            )
        return CockpitRefused(f"the cockpit at {self.label} refused us (HTTP {status}); "
                              "it belongs to another user")

    def _unreachable(self, exc: BaseException) -> CockpitUnavailable:
        return CockpitUnavailable(f"no cockpit answers at {self.label}: {_reason(exc)}")

    async def _get(self, path: str) -> Any:
        try:
            async with self._client().get(self._base + path) as response:
                if response.status in (401, 403):
                    raise self._refused(response.status)
                if response.status != 200:
                    text = (await response.text())[:200]
                    raise CockpitUnavailable(f"{path}: HTTP {response.status}: {text}")
                return await response.json()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc

    async def probe(self) -> dict[str, Any]:
        """``GET /health``: raises :class:`CockpitUnavailable` or :class:`CockpitRefused`."""
        health = await self._get("/health")
        if not isinstance(health, dict) or "node_id" not in health:
            raise CockpitUnavailable(f"{self.label} does not look like a Knarr cockpit")
        return health

    async def fetch(self, name: str) -> Any:
        if name not in SNAPSHOTS:
            raise ValueError(f"unknown snapshot {name!r}")
        return await self._get(f"/v1/{name}")

    async def call(self, skill: str, data: Mapping[str, Any], *,
                   timeout: float = 30.0) -> dict[str, Any]:
        body = {"skill": skill, "input": dict(data), "timeout": timeout}
        try:
            async with self._client().post(
                self._base + "/v1/call", json=body,
                timeout=aiohttp.ClientTimeout(total=timeout + self.request_timeout),
            ) as response:
                if response.status in (401, 403):
                    raise self._refused(response.status)
                result = await response.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc
        if not isinstance(result, dict):
            return {"status": "failed", "error": "the cockpit answered something else"}
        return result

    async def follow(self) -> AsyncIterator[FeedItem]:
        attempt = 0
        first = True
        while not self._closed:
            try:
                if not first:
                    self.link = Link(LinkState.RECONNECTING, "connecting…")
                    yield self.link
                first = False
                health = await self.probe()
                if self._needs_sync(health):
                    synced = await self.fetch_all()
                    self._node_id = str(health["node_id"])
                    status = synced.snapshots.get("status") or {}
                    self._started = float(status.get("started", 0.0) or 0.0)
                    self.last_seq = synced.seq
                    yield synced
                async for item in self._stream():
                    if isinstance(item, Link):
                        attempt = 0
                    yield item
                detail = "the node closed the event stream"
            except CockpitRefused as exc:
                self.link = Link(LinkState.REFUSED, str(exc))
                yield self.link
                return
            except (CockpitUnavailable, aiohttp.ClientError, OSError, TimeoutError) as exc:
                detail = _reason(exc)
            if self._closed:
                return
            delay = backoff_delay(attempt, base=self.backoff_base, cap=self.backoff_cap)
            attempt += 1
            self.link = Link(LinkState.RECONNECTING, detail, retry_in=delay)
            yield self.link
            await asyncio.sleep(delay)

    def _needs_sync(self, health: Mapping[str, Any]) -> bool:
        """Is this another node, or the same node restarted (its event numbers begin
        again), rather than the process we were following?"""
        if health["node_id"] != self._node_id:
            return True
        if int(health.get("last_event", 0)) < self.last_seq:
            return True
        started = self.clock() - float(health.get("uptime", 0.0))
        return abs(started - self._started) > 0.5

    async def _stream(self) -> AsyncIterator[FeedItem]:
        url = f"{self._base}/v1/events?since={self.last_seq}"
        async with self._client().ws_connect(url, heartbeat=self.heartbeat * 4) as ws:
            self.link = Link(LinkState.CONNECTED, self.label)
            yield self.link
            while True:
                try:
                    message = await ws.receive(timeout=self.heartbeat)
                except TimeoutError:
                    yield Heartbeat(self.clock())
                    continue
                if message.type != aiohttp.WSMsgType.TEXT:
                    return  # closed, closing or an error: reconnect
                raw = json.loads(message.data)
                if raw.get("type") == "reset":
                    synced = await self.fetch_all()
                    yield synced
                    continue
                event = FeedEvent.from_dict(raw)
                if event.seq <= self.last_seq:
                    continue
                self.last_seq = event.seq
                yield event

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words."""
    if isinstance(exc, CockpitUnavailable) and isinstance(exc.__cause__, BaseException):
        exc = exc.__cause__
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        return (os_error.strerror or str(os_error)).lower()
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------- recordings


class RecordedFeed(Feed):
    """Replays a recording: snapshots, events and link changes, in recorded order.

    With ``pace`` 0 (tests, screenshots) everything is delivered at once and the feed's
    clock stands still at the end of the recording; with ``pace`` > 0 (the demo) the gaps
    between events are replayed at that speed and the clock runs along the recording's
    own timeline. Nothing reads the wall clock unless ``pace`` > 0.
    """

    label = "recorded feed"

    def __init__(self, items: Iterable[Mapping[str, Any]], *, pace: float = 0.0,
                 max_gap: float = 1.5, monotonic: Callable[[], float] = time.monotonic,
                 hold: bool = False) -> None:
        super().__init__()
        self.items: list[Mapping[str, Any]] = list(items)
        self.pace, self.max_gap = pace, max_gap
        self.hold = hold
        self._monotonic = monotonic
        meta = next((i for i in self.items if i.get("kind") == "meta"), {})
        self.meta: Mapping[str, Any] = meta
        times = [float(i["time"]) for i in self.items if "time" in i]
        times += [float(i["event"]["time"]) for i in self.items if i.get("kind") == "event"]
        self.until = max([float(meta.get("until", 0.0)), *times])
        self._now = min(times, default=self.until) if pace > 0 else self.until
        self._mark = 0.0
        self._current: dict[str, Any] = {}
        self._taken: dict[str, float] = {}
        self.link = Link(LinkState.RECORDED, self.label)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @classmethod
    def from_file(cls, path: str | Path | IO[str], **kwargs: Any) -> RecordedFeed:
        if isinstance(path, (str, Path)):
            with open(path, encoding="utf-8") as f:
                return cls(read_recording(f), **kwargs)
        return cls(read_recording(path), **kwargs)

    @classmethod
    def demo(cls, **kwargs: Any) -> RecordedFeed:
        """The recording bundled with Knarr (``knarr console --demo``)."""
        text = resources.files("knarr.tui").joinpath("demo_feed.jsonl").read_text("utf-8")
        return cls(read_recording(text.splitlines()), **kwargs)

    def clock(self) -> float:
        if self.pace <= 0:
            return self._now
        return self._now + (self._monotonic() - self._mark) * self.pace

    def _advance(self, when: float) -> None:
        self._now = max(self._now, when)
        self._mark = self._monotonic()

    async def fetch(self, name: str) -> Any:
        if name not in SNAPSHOTS:
            raise ValueError(f"unknown snapshot {name!r}")
        return self._current.get(name, {} if name in ("status", "skills", "ledger") else [])

    async def fetch_dated(self, name: str) -> tuple[Any, float]:
        return await self.fetch(name), self._taken.get(name, self._now)

    async def follow(self) -> AsyncIterator[FeedItem]:
        yield self.link
        index = 0
        items = self.items
        synced = False
        while index < len(items):
            item = items[index]
            index += 1
            kind = item.get("kind")
            if kind == "snapshot":
                self._keep(item)
                # The first complete set of snapshots is the initial sync.
                if not synced and all(n in self._current for n in SNAPSHOTS):
                    synced = True
                    self.last_seq = int(item.get("seq", 0))
                    taken = float(item.get("time", self._now))
                    self._advance(taken)
                    yield Synced(dict(self._current), self.last_seq, taken)
            elif kind == "event":
                event = FeedEvent.from_dict(item["event"])
                # Snapshots recorded right after an event are what a client fetching
                # after it would have seen: make them visible before the event is.
                while index < len(items) and items[index].get("kind") == "snapshot":
                    self._keep(items[index])
                    index += 1
                await self._wait_until(event.time)
                self.last_seq = event.seq
                self._advance(event.time)
                yield event
            elif kind == "link":
                if "time" in item:
                    await self._wait_until(float(item["time"]))
                    self._advance(float(item["time"]))
                self.link = Link(LinkState(item["state"]), str(item.get("detail", "")),
                                 item.get("retry_in"))
                yield self.link
        if self.hold:
            await asyncio.Event().wait()

    def _keep(self, item: Mapping[str, Any]) -> None:
        name = str(item["name"])
        self._current[name] = item["data"]
        self._taken[name] = float(item.get("time", self._now))

    async def _wait_until(self, when: float) -> None:
        if self.pace <= 0:
            return
        gap = min(self.max_gap, max(0.0, when - self.clock()) / self.pace)
        if gap > 0:
            await asyncio.sleep(gap)

    async def close(self) -> None:
        self.hold = False

    async def call(self, skill: str, data: Mapping[str, Any], *,
                   timeout: float = 30.0) -> dict[str, Any]:
        self.calls.append((skill, dict(data)))
        return {"status": "failed", "error": "a recorded feed cannot call skills",
                "code": "recorded"}


def read_recording(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Parse a JSON-lines recording, checking its format version."""
    items = [json.loads(line) for line in lines if line.strip()]
    meta = next((i for i in items if i.get("kind") == "meta"), None)
    if meta is None or meta.get("format") != RECORDING_FORMAT:
        raise ValueError(f"not a Knarr console recording (format {RECORDING_FORMAT})")
    return items


class Recorder:
    """Writes what a feed delivers as a recording that :class:`RecordedFeed` replays.

    After each event it also stores the snapshots that event makes stale (as the
    console would re-fetch them), so a replay converges to the same state.
    """

    def __init__(self, out: IO[str], *, stale: Callable[[str], Iterable[str]]) -> None:
        self.out = out
        self.stale = stale
        self._last: dict[str, str] = {}

    def write(self, item: Mapping[str, Any]) -> None:
        self.out.write(json.dumps(item, sort_keys=True, separators=(",", ":")) + "\n")

    def meta(self, **fields: Any) -> None:
        self.write({"kind": "meta", "format": RECORDING_FORMAT, **fields})

    def snapshot(self, name: str, data: Any, *, at: float, seq: int) -> None:
        encoded = json.dumps(data, sort_keys=True)
        if self._last.get(name) == encoded:
            return
        self._last[name] = encoded
        self.write({"kind": "snapshot", "name": name, "data": data, "time": at, "seq": seq})

    async def record(self, feed: Feed, *, until_seq: Callable[[], int | None]) -> None:
        """Record ``feed`` until ``until_seq()`` names a sequence number already seen."""
        async for item in feed.follow():
            if isinstance(item, Synced):
                for name in SNAPSHOTS:
                    self.snapshot(name, item.snapshots[name], at=item.at, seq=item.seq)
            elif isinstance(item, FeedEvent):
                self.write({"kind": "event", "event": item.to_dict()})
                for name in self.stale(item.type):
                    self.snapshot(name, await feed.fetch(name), at=feed.clock(), seq=item.seq)
            end = until_seq()
            if end is not None and feed.last_seq >= end:
                return
