"""Call a skill on the network with JSON input, through the node (``POST /v1/call``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

if TYPE_CHECKING:
    from knarr.tui.app import KnarrConsole


def example_input(schema: dict[str, Any]) -> str:
    """A JSON object with every field of a skill's input schema, to edit."""
    blank = {"string": "", "number": 0, "integer": 0, "boolean": False, "object": {},
             "array": []}
    return json.dumps({k: blank.get(str(v), "") for k, v in schema.items()})


class CallScreen(ModalScreen[None]):
    """A JSON input line and the answer."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close", id="console.close_call",
                tooltip="Close without calling"),
    ]

    def __init__(self, skill: str, schema: dict[str, Any]) -> None:
        super().__init__(id="call")
        self.skill = skill
        self.schema = schema

    def compose(self) -> ComposeResult:
        with Vertical(id="call-box"):
            yield Label(f"Call {self.skill} on the network — JSON input, Enter sends",
                        id="call-title")
            yield Input(example_input(self.schema), id="call-input")
            yield Static(id="call-result")

    @on(Input.Submitted, "#call-input")
    def _send(self, event: Input.Submitted) -> None:
        result = self.query_one("#call-result", Static)
        try:
            data = json.loads(event.value or "{}")
        except json.JSONDecodeError as exc:
            result.update(Text(f"not JSON: {exc}", style="red"))
            return
        if not isinstance(data, dict):
            result.update(Text("the input must be a JSON object", style="red"))
            return
        result.update(Text("calling…", style="dim"))
        cast("KnarrConsole", self.app).call_skill(self.skill, data)

    def show_result(self, answer: dict[str, Any]) -> None:
        result = self.query_one("#call-result", Static)
        if answer.get("status") == "completed":
            provider = str(answer.get("provider", ""))[:12]
            body = json.dumps(answer.get("output"), indent=2, sort_keys=True)
            result.update(Text(f"completed by {provider}\n{body}", style="green"))
        else:
            result.update(Text(f"failed: {answer.get('error', answer)}", style="red"))
