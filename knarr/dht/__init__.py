"""Compatibility import paths from the product description (``knarr.dht.node``)."""
