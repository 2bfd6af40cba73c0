"""The cockpit's snapshots, over its Unix socket."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from knarr.cli.cockpit_client import cockpit_request
from knarr.errors import ConfigError, StorageError
from knarr.node.node import Node
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


@pytest.mark.parametrize(
    ("database", "error", "why"),
    [
        ("node.db", StorageError, "is in use by another knarr node"),  # the lock on node.db
        ("other.db", ConfigError, "cockpit.sock answers"),  # its own db: the live socket
    ],
    ids=["same-database", "other-database"],
)
async def test_a_second_node_in_the_folder_is_refused_and_the_first_keeps_its_cockpit(
    tmp_path: Path, make_node: NodeFactory, database: str, error: type[Exception], why: str,
) -> None:
    first = await make_node(storage=tmp_path / "node.db", cockpit_dir=tmp_path)
    second = Node("127.0.0.1", 0, storage=tmp_path / database, cockpit_dir=tmp_path)
    try:
        with pytest.raises(error, match=why) as refused:
            await second.start()
        assert str(tmp_path) in str(refused.value)
        assert second.dht.endpoint is None  # refused before binding anything
    finally:
        await second.stop()
    health = await cockpit_request(tmp_path / "cockpit.sock", "GET", "/health")
    assert health["node_id"] == first.node_id


@pytest.mark.parametrize("leftover", ["closed socket", "plain file"])
async def test_a_stale_socket_is_replaced(
    tmp_path: Path, make_node: NodeFactory, leftover: str
) -> None:
    path = tmp_path / "cockpit.sock"
    if leftover == "closed socket":  # what a node that crashed leaves behind
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
            dead.bind(str(path))
            dead.listen()
    else:
        path.write_text("not a socket")
    node = await make_node(storage=tmp_path / "node.db", cockpit_dir=tmp_path)
    health = await cockpit_request(path, "GET", "/health")
    assert health["node_id"] == node.node_id
