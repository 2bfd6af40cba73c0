"""MCP bridges with a real MCP server process, called from another node."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from knarr.errors import ConfigError, TaskFailed
from knarr.node.bridges import Bridge, schema_of, skill_name_for
from tests.conftest import NodeFactory, wait_for

SERVER = Path(__file__).with_name("mcp_server.py")
pytestmark = pytest.mark.slow


def command(*extra: str) -> str:
    return " ".join([sys.executable, str(SERVER), *extra])


def test_tool_names_and_schemas_map_to_skills() -> None:
    assert skill_name_for("shout_text") == "shout-text"
    assert skill_name_for("Read File") == "read-file"
    assert skill_name_for("bad/name!") is None
    schema = {"properties": {"a": {"type": "integer"}, "b": {"type": "string"},
                             "c": {"type": "number"}, "d": {"anyOf": []}},
              "required": ["a", "b", "d"]}
    assert schema_of(schema) == {"a": "integer", "b": "string", "d": "any"}


async def test_tools_are_served_and_called_from_another_node(make_node: NodeFactory) -> None:
    provider = await make_node()
    caller = await make_node()
    await caller.join([f"127.0.0.1:{provider.port}"])
    bridge = Bridge(command(), 30, provider)
    await bridge.start()
    try:
        assert sorted(bridge.skills) == ["add", "refuse", "shout-text"]
        [record] = await caller.find_skills("add")
        assert record.description == "Adds two integers"
        assert record.input_schema == {"a": "integer", "b": "integer"}
        assert "mcp" in record.tags
        assert await caller.request("add", {"a": 2, "b": 40}) == {"result": 42}
        assert await caller.request("shout-text", {"text": "hi", "times": 2}) == {
            "result": "HI HI "
        }
        with pytest.raises(TaskFailed, match="refused: no reason"):
            await caller.request("refuse", {"reason": "no reason"})
    finally:
        await bridge.stop()
    assert "add" not in provider.skills


async def test_a_crashed_server_is_restarted_and_its_skills_return(
    make_node: NodeFactory,
) -> None:
    provider = await make_node()
    caller = await make_node()
    await caller.join([f"127.0.0.1:{provider.port}"])
    bridge = Bridge(command("--crash-after", "2"), 30, provider, min_backoff=0.05,
                    health_interval=0.1)
    await bridge.start()
    try:
        assert await caller.request("add", {"a": 1, "b": 1}) == {"result": 2}
        with pytest.raises(Exception):  # noqa: B017 - the server dies during this call
            await caller.request("add", {"a": 1, "b": 2})
        await wait_for(lambda: bridge.restarts >= 1, timeout=20)
        await wait_for(lambda: "add" in provider.skills, timeout=20)
        assert await caller.request("add", {"a": 3, "b": 4}) == {"result": 7}
        restarts = [e for e in provider.events.since(0) or [] if e.type == "bridge.restart"]
        assert restarts and restarts[0].data["command"] == bridge.command
    finally:
        await bridge.stop()


async def test_a_name_collision_names_both(make_node: NodeFactory) -> None:
    provider = await make_node()

    async def add(data: dict[str, int]) -> dict[str, int]:
        return {"result": 0}

    provider.register_handler("add", add)
    bridge = Bridge(command(), 30, provider)
    with pytest.raises(ConfigError, match="tool 'add' would be skill 'add'.*already served"):
        await bridge.start()
    await bridge.stop()


async def test_a_command_that_cannot_start_is_a_clear_error(make_node: NodeFactory) -> None:
    provider = await make_node()
    bridge = Bridge("/nonexistent/mcp-server --flag", 5, provider)
    with pytest.raises(ConfigError, match="cannot start"):
        await asyncio.wait_for(bridge.start(), 30)
    await bridge.stop()


@pytest.mark.parametrize(
    "code", ["pass", "import sys; sys.stdin.read()"], ids=["exits-at-once", "never-answers"]
)
async def test_a_server_that_never_comes_up_is_a_clear_error(
    make_node: NodeFactory, code: str
) -> None:
    """Not retried for ever while the node's start-up waits on it."""
    provider = await make_node()
    bridge = Bridge(f"{sys.executable} -c '{code}'", 1, provider)
    with pytest.raises(ConfigError, match="cannot start"):
        await asyncio.wait_for(bridge.start(), 30)
    await bridge.stop()
    assert bridge.restarts == 0
