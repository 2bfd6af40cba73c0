"""Knarr: a peer-to-peer exchange protocol for autonomous agents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from knarr.errors import (
    BadSignature,
    BootstrapFailed,
    ConfigError,
    FutureMessage,
    HandlerError,
    InvalidRecord,
    KnarrError,
    LocalProtocolError,
    MalformedMessage,
    MistypedMessage,
    NetworkError,
    OversizedMessage,
    RecordTooLarge,
    RemoteProtocolError,
    ReplayedMessage,
    RequestTimeout,
    SkillError,
    SkillNotFound,
    StaleMessage,
    StorageError,
    TruncatedMessage,
)

if TYPE_CHECKING:
    from knarr.node.node import Node
    from knarr.node.records import SkillRecord

    DHTNode = Node

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The node (asyncio, pynacl, apsw, the DHT) loads on first use, so tools that only
    # need a piece of Knarr (knarr-watchman, knarr --version) start small and fast.
    if name in ("Node", "DHTNode"):
        from knarr.node.node import Node

        return Node
    if name == "SkillRecord":
        from knarr.node.records import SkillRecord

        return SkillRecord
    raise AttributeError(f"module 'knarr' has no attribute {name!r}")

__all__ = [
    "BadSignature",
    "BootstrapFailed",
    "ConfigError",
    "DHTNode",
    "FutureMessage",
    "HandlerError",
    "InvalidRecord",
    "KnarrError",
    "LocalProtocolError",
    "MalformedMessage",
    "MistypedMessage",
    "NetworkError",
    "Node",
    "OversizedMessage",
    "RecordTooLarge",
    "RemoteProtocolError",
    "ReplayedMessage",
    "RequestTimeout",
    "SkillError",
    "SkillNotFound",
    "SkillRecord",
    "StaleMessage",
    "StorageError",
    "TruncatedMessage",
    "__version__",
]
