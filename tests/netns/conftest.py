"""The ``topology`` fixture: eight namespace hosts on a switch, removed even on failure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netns.topology import Topology, missing_prerequisite

HOSTS = 8


@pytest.fixture
def topology() -> Iterator[Topology]:
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    topo = Topology(HOSTS)
    try:
        topo.create()
        yield topo
    finally:
        topo.destroy()
        assert topo.leftovers() == [], "namespaces or links left behind"
