"""The command palette (ctrl+p): show a panel, jump to a peer or skill, call a skill.

Typing ``call NAME {"json": "input"}`` offers to run that call directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

from knarr.tui.model import PANELS
from knarr.tui.widgets.panel import short_id

if TYPE_CHECKING:
    from knarr.tui.app import KnarrConsole

_CALL = re.compile(r"^\s*call\s+(\S+)\s+(\{.*\})\s*$", re.DOTALL)


class ConsoleCommands(Provider):
    """Commands built from what the console currently shows."""

    @property
    def console(self) -> KnarrConsole:
        return cast("KnarrConsole", self.app)

    def _commands(self) -> Iterator[tuple[str, Callable[[], object], str]]:
        console = self.console
        for panel in PANELS:
            yield (f"Show {panel.title.lower()}", partial(console.show_panel, panel.id),
                   f"Switch to the {panel.title.lower()} panel")
        model = console.model
        for node_id, peer in sorted(model.rows["peers"].items()):
            yield (f"Peer {short_id(node_id)} {peer.get('address', '')}",
                   partial(console.jump_to, "peers", node_id),
                   "Jump to this peer (Enter opens it)")
        names = sorted({str(r["name"]) for r in model.rows["skills"].values()})
        for name in names:
            yield (f"Skill {name}", partial(console.open_detail, "skills", name),
                   "Open the skill: its schema and providers")
            yield (f"Call {name}…", partial(console.open_call, name),
                   "Call the skill on the network with JSON input")

    async def discover(self) -> Hits:
        for text, command, help_text in self._commands():
            if text.startswith(("Show ", "Call ")):
                yield DiscoveryHit(text, command, help=help_text)

    async def search(self, query: str) -> Hits:
        direct = _CALL.match(query)
        if direct is not None:
            skill, raw = direct.group(1), direct.group(2)
            try:
                data = json.loads(raw)
            except json.JSONDecodeError:
                data = None
            if isinstance(data, dict):
                yield Hit(1.0, f"Call {skill} with {json.dumps(data)}",
                          partial(self.console.call_skill, skill, data),
                          help="Run it on the network now (POST /v1/call)")
        matcher = self.matcher(query)
        for text, command, help_text in self._commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), command, text=text, help=help_text)
