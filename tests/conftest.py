"""Shared fixtures: real nodes on loopback, never the public bootstrap hosts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from knarr.node.node import Node

NodeFactory = Callable[..., Awaitable[Node]]


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds, failing after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


@pytest.fixture
async def make_node() -> AsyncIterator[NodeFactory]:
    """Start nodes on 127.0.0.1 with OS-chosen ports; all are stopped afterwards."""
    nodes: list[Node] = []

    async def factory(**kwargs: object) -> Node:
        node = Node("127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
        await node.start()
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        await node.stop()


def sheet(name: str, *tags: str) -> dict[str, object]:
    return {
        "name": name,
        "version": "1.0.0",
        "description": f"{name} for tests",
        "tags": list(tags),
        "input_schema": {"text": "string"},
        "output_schema": {"text": "string"},
    }
