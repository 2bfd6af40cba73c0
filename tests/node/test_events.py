"""The node's event ring: what a client that reconnects after ``seq`` is given."""

from __future__ import annotations

from knarr.node.events import EventLog


def test_since_gives_the_events_after_seq_in_order() -> None:
    log = EventLog(capacity=5, clock=lambda: 1.0)
    assert log.since(0) == []
    for i in range(3):
        log.emit("tick", i=i)
    assert [e.seq for e in log.since(0) or []] == [1, 2, 3]
    assert [e.seq for e in log.since(2) or []] == [3]
    assert log.since(3) == []
    assert log.since(7) == []


def test_since_is_none_once_the_ring_dropped_what_was_missed() -> None:
    log = EventLog(capacity=5, clock=lambda: 1.0)
    for i in range(12):
        log.emit("tick", i=i)
    assert log.since(6) is None  # 7 is gone: the oldest kept is 8
    assert [e.seq for e in log.since(7) or []] == [8, 9, 10, 11, 12]
    assert [e.data["i"] for e in log.since(10) or []] == [10, 11]
