"""Console tests: apps fed from the bundled recording, snapshots kept in ``snapshots/``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from pytest_textual_snapshot import SVGImageExtension
from syrupy.assertion import SnapshotAssertion
from syrupy.location import PyTestLocation
from textual.pilot import Pilot

from knarr.tui.app import KnarrConsole
from knarr.tui.feed import Feed, RecordedFeed

SNAPSHOTS = Path(__file__).resolve().parents[2] / "snapshots"


class KnarrSnapshots(SVGImageExtension):
    """The plugin's SVG snapshots, kept in the top-level ``snapshots/`` folder."""

    @classmethod
    def dirname(cls, *, test_location: PyTestLocation) -> str:
        return str(SNAPSHOTS / Path(test_location.filepath).stem)


class _Baselines:
    """What ``snap_compare`` sees as ``snapshot``: it always picks our extension."""

    def __init__(self, snapshot: SnapshotAssertion) -> None:
        self._snapshot = snapshot

    def use_extension(self, _extension: object) -> SnapshotAssertion:
        return self._snapshot.use_extension(KnarrSnapshots)


@pytest.fixture
def snapshot(snapshot: SnapshotAssertion) -> _Baselines:
    return _Baselines(snapshot)


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Rendering must not depend on the developer's terminal settings."""
    for name in ("NO_COLOR", "TEXTUAL_THEME", "FORCE_COLOR", "TEXTUAL_ANIMATIONS"):
        monkeypatch.delenv(name, raising=False)
    yield


def demo_items() -> list[Mapping[str, Any]]:
    return list(RecordedFeed.demo().items)


def recorded_console(
    items: Sequence[Mapping[str, Any]] | None = None, *, theme: str = "dark",
    feed: Feed | None = None,
) -> KnarrConsole:
    """A console replaying a recording, with a still clock, no timers, no blinking and
    no toasts (they time out): everything a snapshot needs to be the same every time."""
    feed = feed or RecordedFeed(items if items is not None else demo_items())
    return KnarrConsole(feed, theme=theme, tick=None, blink=False, toasts=False,
                        resync_interval=0, resync_rows_interval=0)


async def settle(pilot: Pilot[Any], timeout: float = 10.0) -> None:
    """Wait (by deadline, not by sleeping) until the recording is fully applied."""
    app = pilot.app
    assert isinstance(app, KnarrConsole)
    await until(pilot, lambda: app.settled, timeout)
    await pilot.pause()


async def until(pilot: Pilot[Any], predicate: Callable[[], bool],
                timeout: float = 10.0) -> None:
    """Let the app run until ``predicate`` holds, failing after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await pilot.pause(0.01)


