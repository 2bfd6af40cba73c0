"""Prompt files: TOML with the template in ``content`` (the original Thrall's format).

``{{name}}`` / ``{{envelope.name}}`` insert envelope fields, ``{{filter.tier}}`` the
sender's trust tier and ``{{cascade.reason}}`` why the L1 model escalated.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from knarr.recipes.recipe import RecipeError

_KEYS: Final = ("name", "version", "model", "description", "system", "content")


@dataclass(frozen=True, slots=True)
class Prompt:
    name: str
    content: str
    system: str = ""
    model: str = ""
    version: str = ""
    source: str = ""


def load_prompt(path: Path) -> Prompt:
    source = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{source}: cannot read the prompt: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{source}: invalid TOML: {exc}") from exc
    for key in data:
        if key not in _KEYS:
            raise RecipeError(f"{source}: {key}: unknown key; expected one of "
                              + ", ".join(f'"{k}"' for k in _KEYS))
    values: dict[str, str] = {}
    for key in _KEYS:
        value: Any = data.get(key, "")
        if not isinstance(value, str):
            raise RecipeError(f"{source}: {key}: expected a string")
        values[key] = value
    if not values["content"].strip():
        raise RecipeError(f"{source}: content: missing; the prompt text goes in content")
    return Prompt(path.stem, values["content"], values["system"], values["model"],
                  values["version"], source)


def load_prompts(folders: Sequence[Path]) -> tuple[dict[str, Prompt], dict[str, str]]:
    """Prompts by name (a later folder overrides), and why broken files were rejected."""
    prompts: dict[str, Prompt] = {}
    errors: dict[str, str] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                prompts[path.stem] = load_prompt(path)
                errors.pop(path.stem, None)
            except RecipeError as exc:
                errors[path.stem] = str(exc)
    return prompts, errors
