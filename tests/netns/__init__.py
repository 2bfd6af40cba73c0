"""Multi-host tests: real nodes in separate network namespaces, joined by a bridge."""
