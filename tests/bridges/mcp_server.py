"""A real MCP server for the bridge tests (stdio, the official SDK).

``--crash-after N`` makes the process exit after N tool calls, to test restarts.
"""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("knarr-test-tools")
_flag = "--crash-after"
CRASH_AFTER = int(sys.argv[sys.argv.index(_flag) + 1]) if _flag in sys.argv else 0
calls = 0


def _count() -> None:
    global calls
    calls += 1
    if CRASH_AFTER and calls >= CRASH_AFTER:
        os._exit(3)


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers"""
    _count()
    return a + b


@server.tool(name="shout_text")
def shout(text: str, times: int = 1) -> str:
    """Upper-cases text"""
    _count()
    return (text.upper() + " ") * times


@server.tool()
def refuse(reason: str) -> str:
    """Always reports a tool error"""
    _count()
    raise ToolError(f"refused: {reason}")


if __name__ == "__main__":
    server.run()
