"""Knarr: a peer-to-peer exchange protocol for autonomous agents."""

from __future__ import annotations

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
from knarr.node.node import Node
from knarr.node.records import SkillRecord

DHTNode = Node
__version__ = "0.1.0"

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
