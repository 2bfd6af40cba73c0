"""The import path the product description uses: ``from knarr.dht.sidecar import TaskContext``."""

from __future__ import annotations

from knarr.node.assets import TaskContext

__all__ = ["TaskContext"]
