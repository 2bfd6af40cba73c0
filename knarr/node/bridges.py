"""MCP bridges: serve the tools of a Model Context Protocol server as Knarr skills.

Each bridge runs its MCP server as a subprocess over stdio with the official ``mcp``
SDK, lists its tools, and registers and announces one skill per tool (name, description
and input schema taken from the tool). Calls are forwarded with the bridge's timeout; a
tool error becomes a failed task carrying the tool's message. If the server dies its
skills are withdrawn and it is restarted with backoff; the node keeps serving the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from knarr.config import SKILL_NAME_RE
from knarr.errors import ConfigError, KnarrError

if TYPE_CHECKING:
    from knarr.node.node import Node

log = logging.getLogger("knarr.bridges")

_JSON_TYPES = {"string", "number", "integer", "boolean", "object", "array"}


class ToolFailed(KnarrError):
    """The MCP tool reported an error (its message is this error's text)."""


def skill_name_for(tool: str) -> str | None:
    """The skill name a tool is served under: lowercase, ``_`` and spaces as ``-``."""
    name = re.sub(r"[\s_.]+", "-", tool.strip().lower())
    return name if SKILL_NAME_RE.fullmatch(name) else None


def schema_of(input_schema: dict[str, Any]) -> dict[str, str]:
    """Knarr's ``{field: type}`` for a tool's JSON Schema: its required fields."""
    props = input_schema.get("properties") or {}
    required = input_schema.get("required") or []
    out: dict[str, str] = {}
    for name in required:
        spec = props.get(name, {})
        kind = spec.get("type") if isinstance(spec, dict) else None
        out[str(name)] = kind if isinstance(kind, str) and kind in _JSON_TYPES else "any"
    return out


def output_of(result: Any) -> dict[str, Any]:
    """A tool result as a skill's output dict."""
    structured = getattr(result, "structured_content", None)
    if isinstance(structured, dict):
        return structured
    texts = [getattr(c, "text", None) for c in getattr(result, "content", [])]
    return {"result": "\n".join(t for t in texts if isinstance(t, str))}


def _error_text(result: Any) -> str:
    texts = [getattr(c, "text", "") for c in getattr(result, "content", [])]
    return "\n".join(t for t in texts if t) or "the tool reported an error"


@dataclass
class Bridge:
    """One MCP server, supervised."""

    command: str
    timeout: float
    node: Node
    min_backoff: float = 1.0
    max_backoff: float = 60.0
    health_interval: float = 2.0
    skills: list[str] = field(default_factory=list)
    restarts: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _session: Any = None
    _failed_start: BaseException | None = None

    def __post_init__(self) -> None:
        try:
            parts = shlex.split(self.command)
        except ValueError as exc:
            raise ConfigError(f"bridge {self.command!r}: {exc}") from exc
        if not parts:
            raise ConfigError("bridge: empty command")
        self._argv = parts

    async def start(self) -> None:
        """Start the server and serve its tools. Any failure of the first start is raised
        as a :class:`ConfigError` (a bad command, a server that exits or does not answer
        within ``timeout``, a name collision); later ones are logged and retried."""
        self._task = asyncio.create_task(self._supervise(), name=f"bridge {self.command}")
        ready = asyncio.ensure_future(self.ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._failed_start is not None:
            raise self._failed_start

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._withdraw()

    async def _supervise(self) -> None:
        backoff = self.min_backoff
        first = True
        while True:
            try:
                await self._serve_once(first)
                backoff = self.min_backoff
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # the SDK wraps errors in exception groups
                if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                    raise
                if not self.ready.is_set():
                    # A server that never came up is the operator's to fix (a wrong
                    # command, one that exits at once, one that never answers): say so
                    # now rather than retry it for ever while start() waits.
                    fatal = _find(exc, (ConfigError,))
                    self._failed_start = fatal if fatal is not None else ConfigError(
                        f"bridge {self.command!r}: cannot start: {_describe(exc)}"
                    )
                    return
                log.warning("bridge %r stopped: %s", self.command, _describe(exc))
            first = False
            self._withdraw()
            self.restarts += 1
            self.node.events.emit("bridge.restart", command=self.command, attempt=self.restarts,
                                  backoff=backoff)
            log.info("bridge %r: restarting in %.0f s", self.command, backoff)
            await asyncio.sleep(backoff)
            backoff = min(self.max_backoff, backoff * 2)

    async def _serve_once(self, first: bool) -> None:
        from mcp.client.session import ClientSession
        from mcp.client.stdio import StdioServerParameters, stdio_client

        command = sys.executable if self._argv[0] in ("python", "python3") else self._argv[0]
        params = StdioServerParameters(command=command, args=self._argv[1:])
        errlog = sys.stderr if log.isEnabledFor(logging.DEBUG) else _devnull()
        async with stdio_client(params, errlog=errlog) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await asyncio.wait_for(session.initialize(), self.timeout)
                listing = await asyncio.wait_for(session.list_tools(), self.timeout)
                self._session = session
                await self._serve_tools(listing.tools, first)
                self.ready.set()
                while True:  # health: a dead server stops answering pings
                    await asyncio.sleep(self.health_interval)
                    await asyncio.wait_for(session.send_ping(), self.timeout)

    async def _serve_tools(self, tools: list[Any], first: bool) -> None:
        node = self.node
        for tool in tools:
            name = skill_name_for(tool.name)
            if name is None:
                log.warning("bridge %r: tool %r has no valid skill name; skipped",
                            self.command, tool.name)
                continue
            if name in node.skills and name not in self.skills:
                message = (f"bridge {self.command!r}: tool {tool.name!r} would be skill "
                           f"{name!r}, which is already served by this node")
                if first:
                    raise ConfigError(message)
                log.error("%s; skipped", message)
                continue
            node.register_handler(name, self._handler(tool.name))
            await node.announce({
                "name": name,
                "description": (tool.description or f"MCP tool {tool.name}")[:256],
                "tags": ["mcp"],
                "input_schema": schema_of(tool.input_schema or {}),
                "output_schema": {},
            })
            if name not in self.skills:
                self.skills.append(name)
        log.info("bridge %r: serving %s", self.command, ", ".join(self.skills) or "no tools")

    def _handler(self, tool: str) -> Callable[[dict[str, Any]], Any]:
        async def call(data: dict[str, Any]) -> dict[str, Any]:
            session = self._session
            if session is None:
                raise ToolFailed("the MCP server is restarting")
            result = await asyncio.wait_for(session.call_tool(tool, dict(data)), self.timeout)
            if getattr(result, "is_error", False):
                raise ToolFailed(_error_text(result))
            return output_of(result)

        return call

    def _withdraw(self) -> None:
        self._session = None
        for name in self.skills:
            self.node.unregister(name)
        self.skills.clear()


def _find(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``kinds`` in ``exc`` or, for a group, inside it."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kinds)
            if found is not None:
                return found
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_DEVNULL: Any = None


def _devnull() -> Any:
    """Where an MCP server's stderr goes unless we log at DEBUG."""
    global _DEVNULL
    if _DEVNULL is None:
        _DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - kept open for the process
    return _DEVNULL
