"""Helpers for Thrall's tests: a clock the test moves, recipes written to a temporary
folder, and a Thrall on a real (unstarted or started) node."""

from __future__ import annotations

import textwrap
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from knarr.config import ThrallConfig
from knarr.node.node import Node
from knarr.recipes.engine import Thrall
from knarr.recipes.recipe import Recipe, parse_recipe

PEER = "ab" * 32
TEAM = "7e" * 32
KNOWN = "c0" * 32


class Clock:
    """Time that only moves when the test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def recipe(text: str, name: str = "r", prompts: tuple[str, ...] = ("triage",)) -> Recipe:
    """A recipe from TOML text (dedented)."""
    return parse_recipe(tomllib.loads(textwrap.dedent(text)), name=name,
                        source=f"{name}.toml", prompts=prompts)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


ThrallFactory = Callable[..., Awaitable[Thrall]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_thrall(tmp_path: Path) -> AsyncIterator[ThrallFactory]:
    """A started Thrall (bundled recipes off unless asked) on a node, stopped afterwards
    (the node too, when the factory made it)."""
    made: list[tuple[Thrall, Node | None]] = []

    async def factory(node: Node | None = None, *, config: ThrallConfig | None = None,
                      recipes_dir: Path | None = None, clock: Clock | None = None,
                      **kwargs: Any) -> Thrall:
        own = node is None
        if node is None:
            node = Node("127.0.0.1", 0, clock=clock or time.time)
        thrall = Thrall(
            node, config or ThrallConfig(enabled=True, bundled=False), base_dir=tmp_path,
            recipes_dir=recipes_dir or tmp_path / "recipes", clock=clock, **kwargs,
        )
        await thrall.start()
        made.append((thrall, node if own else None))
        return thrall

    yield factory
    for thrall, node in made:
        await thrall.stop()
        if node is not None:
            await node.stop()
