"""Feeds: the recording replays deterministically; the cockpit client syncs, streams,
reconnects by itself and resumes where it stopped, and is refused a wrong token."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path

import pytest

from knarr.node.node import Node
from knarr.tui.feed import (
    SNAPSHOTS,
    CockpitFeed,
    CockpitRefused,
    CockpitUnavailable,
    FeedEvent,
    FeedItem,
    Link,
    LinkState,
    RecordedFeed,
    Recorder,
    Synced,
    backoff_delay,
    read_recording,
)
from knarr.tui.model import stale_after
from tests.conftest import NodeFactory, wait_for


async def collect(feed: RecordedFeed) -> list[FeedItem]:
    return [item async for item in feed.follow()]


async def test_recording_replays_the_same_every_time() -> None:
    first, second = await collect(RecordedFeed.demo()), await collect(RecordedFeed.demo())
    assert first == second
    assert isinstance(first[0], Link) and first[0].state is LinkState.RECORDED
    assert isinstance(first[1], Synced) and set(first[1].snapshots) == set(SNAPSHOTS)
    events = [i for i in first if isinstance(i, FeedEvent)]
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert {e.type for e in events} >= {"peer.added", "task.consumed", "watchman", "recipe"}


async def test_recording_clock_stands_still_without_pace() -> None:
    feed = RecordedFeed.demo()
    before = feed.clock()
    await collect(feed)
    assert feed.clock() == before == feed.until


async def test_snapshots_recorded_after_an_event_are_fetchable_with_it() -> None:
    feed = RecordedFeed.demo()
    async for item in feed.follow():
        if isinstance(item, FeedEvent) and item.type == "watchman":
            journal = await feed.fetch("watchman")
            assert any(j["time"] >= item.time - 1 for j in journal)
            break
    else:
        pytest.fail("the demo has no watchman event")


def test_reading_a_recording_checks_its_format() -> None:
    with pytest.raises(ValueError, match="not a Knarr console recording"):
        read_recording(['{"kind": "event"}'])


def test_backoff_doubles_then_stays_capped() -> None:
    delays = [backoff_delay(n, base=0.25, cap=5.0) for n in range(8)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


# ---------------------------------------------------------------------- a real cockpit


async def _follow(feed: CockpitFeed, into: list[FeedItem]) -> None:
    async for item in feed.follow():
        into.append(item)


async def wait_for_item(into: list[FeedItem], predicate: Callable[[FeedItem], bool],
                        timeout: float = 10.0) -> None:
    await wait_for(lambda: any(predicate(i) for i in into), timeout)


async def test_cockpit_feed_syncs_streams_and_resumes(tmp_path: Path,
                                                      make_node: NodeFactory) -> None:
    node = await make_node(cockpit_dir=tmp_path)
    feed = CockpitFeed(socket_path=tmp_path / "cockpit.sock", heartbeat=0.2,
                       backoff_base=0.02, backoff_cap=0.1)
    got: list[FeedItem] = []
    task = asyncio.create_task(_follow(feed, got))
    try:
        await wait_for_item(got, lambda i: isinstance(i, Link) and i.state is LinkState.CONNECTED)
        synced = next(i for i in got if isinstance(i, Synced))
        assert synced.snapshots["status"]["node_id"] == node.node_id
        node.record_journal("watchman", "restart", {"attempt": 1})
        await wait_for_item(got, lambda i: isinstance(i, FeedEvent) and i.type == "watchman")

        # The cockpit goes away (the node keeps running and emitting), then returns.
        assert node.cockpit is not None
        await node.cockpit.stop()
        await wait_for_item(got, lambda i: isinstance(i, Link)
                            and i.state is LinkState.RECONNECTING and i.retry_in is not None)
        missed = node.events.emit("demand", kind="skill", name="missed-while-away")
        mark = len(got)
        await node.cockpit.start()
        await wait_for_item(got, lambda i: isinstance(i, FeedEvent) and i.seq == missed.seq)
        after = got[mark:]
        # Resumed from the last sequence number: the missed event, and no full resync.
        assert not any(isinstance(i, Synced) for i in after)
        assert [i.seq for i in after if isinstance(i, FeedEvent)] == [missed.seq]
        assert feed.last_seq == missed.seq
    finally:
        await feed.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_cockpit_feed_resyncs_when_a_new_node_takes_over(tmp_path: Path) -> None:
    first = Node("127.0.0.1", 0, cockpit_dir=tmp_path)
    await first.start()
    feed = CockpitFeed(socket_path=tmp_path / "cockpit.sock", heartbeat=0.2,
                       backoff_base=0.02, backoff_cap=0.1)
    got: list[FeedItem] = []
    task = asyncio.create_task(_follow(feed, got))
    second = Node("127.0.0.1", 0, cockpit_dir=tmp_path)
    try:
        await wait_for_item(got, lambda i: isinstance(i, Link) and i.state is LinkState.CONNECTED)
        await first.stop()
        await wait_for_item(got, lambda i: isinstance(i, Link)
                            and i.state is LinkState.RECONNECTING and i.retry_in is not None)
        await second.start()
        await wait_for_item(got, lambda i: isinstance(i, Synced)
                            and i.snapshots["status"]["node_id"] == second.node_id)
    finally:
        await feed.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await second.stop()


async def test_wrong_token_is_refused_on_tcp(tmp_path: Path, make_node: NodeFactory) -> None:
    node = await make_node(cockpit_dir=tmp_path, cockpit_port=0)
    assert node.cockpit is not None and node.cockpit.port
    feed = CockpitFeed(host="127.0.0.1", port=node.cockpit.port, token="not-the-token")
    try:
        with pytest.raises(CockpitRefused, match="refused the token"):
            await feed.probe()
        states = [item async for item in feed.follow()]
        assert states == [Link(LinkState.REFUSED, states[0].detail)]  # and it gives up
    finally:
        await feed.close()
    good = CockpitFeed(host="127.0.0.1", port=node.cockpit.port, token=node.cockpit.token)
    try:
        assert (await good.probe())["node_id"] == node.node_id
    finally:
        await good.close()


async def test_no_cockpit_is_unavailable(tmp_path: Path) -> None:
    feed = CockpitFeed(socket_path=tmp_path / "cockpit.sock")
    try:
        with pytest.raises(CockpitUnavailable, match="no cockpit answers"):
            await feed.probe()
    finally:
        await feed.close()


async def test_recorder_output_replays(tmp_path: Path, make_node: NodeFactory) -> None:
    node = await make_node(cockpit_dir=tmp_path)
    out = io.StringIO()
    recorder = Recorder(out, stale=stale_after)
    recorder.meta(until=0)
    feed = CockpitFeed(socket_path=tmp_path / "cockpit.sock", heartbeat=0.1)
    end: dict[str, int | None] = {"seq": None}
    task = asyncio.create_task(recorder.record(feed, until_seq=lambda: end["seq"]))
    try:
        await wait_for(lambda: feed.link.state is LinkState.CONNECTED)
        node.record_journal("recipe", "fired", {"recipe": "r1", "action": "log"})
        end["seq"] = node.events.last_seq
        await asyncio.wait_for(task, 10)
    finally:
        await feed.close()
    replay = RecordedFeed(read_recording(out.getvalue().splitlines()))
    items = await collect(replay)
    assert any(isinstance(i, FeedEvent) and i.type == "recipe" for i in items)
    assert [j["recipe"] for j in await replay.fetch("recipes")] == ["r1"]
