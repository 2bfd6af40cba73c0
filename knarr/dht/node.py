"""The import path the product description uses: ``from knarr.dht.node import DHTNode``."""

from __future__ import annotations

from knarr.node.node import Node as DHTNode

__all__ = ["DHTNode"]
