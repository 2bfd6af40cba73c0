"""The messages that carry feed data from workers to the console's handlers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from knarr.tui.feed import FeedEvent, Link, Synced


@dataclass
class LinkChanged(Message):
    """The connection to the node changed state."""

    link: Link


@dataclass
class SnapshotsArrived(Message):
    """A full set of snapshots (after connecting, a reset, or a refresh)."""

    synced: Synced
    refresh: bool = False


@dataclass
class EventArrived(Message):
    """One event from the node's stream."""

    event: FeedEvent


@dataclass
class PanelFetched(Message):
    """One snapshot, re-fetched because events made it stale."""

    name: str
    data: Any
    at: float


@dataclass
class StillConnected(Message):
    """A heartbeat: the node is there, nothing changed."""

    at: float


@dataclass
class FeedEnded(Message):
    """The feed has nothing more to deliver (a recording that finished)."""


@dataclass
class SkillCalled(Message):
    """``POST /v1/call`` answered (or failed)."""

    skill: str
    result: dict[str, Any]
