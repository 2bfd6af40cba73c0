"""The cockpit's snapshots, over its Unix socket."""

from __future__ import annotations

from pathlib import Path

from knarr.cli.cockpit_client import cockpit_request
from tests.conftest import NodeFactory


async def test_peers_last_seen_is_the_same_in_every_snapshot_until_the_peer_is_heard(
    tmp_path: Path, make_node: NodeFactory
) -> None:
    hub = await make_node(cockpit_dir=tmp_path)
    other = await make_node()
    await other.join([f"127.0.0.1:{hub.port}"])
    socket = tmp_path / "cockpit.sock"
    first = await cockpit_request(socket, "GET", "/v1/peers")
    again = await cockpit_request(socket, "GET", "/v1/peers")
    # A console diffs snapshots: values that jitter would redraw every peer every time.
    assert [p["node_id"] for p in first] == [other.node_id]
    assert first == again
