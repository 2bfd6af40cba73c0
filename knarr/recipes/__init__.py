"""Thrall: recipes that triage mail, events and ticks, with or without an LLM.

``trigger → filter → gather → evaluate → action``, described in TOML files (the
bundled set in ``knarr/recipes/bundled/`` plus the node's ``recipes/`` folder). The
decision core (:mod:`~knarr.recipes.pipeline`) is pure; :class:`Thrall` runs it on a
node. This package never imports textual.
"""

from __future__ import annotations

from knarr.recipes.backends import (
    Backend,
    BackendError,
    LocalBackend,
    OllamaBackend,
    OpenAIBackend,
)
from knarr.recipes.cascade import Evaluator, Verdict
from knarr.recipes.engine import BUNDLED, RELOAD_SENTINEL, Firing, LoadReport, Thrall
from knarr.recipes.pipeline import Decision, Envelope, Pipeline
from knarr.recipes.recipe import Recipe, RecipeError, load_recipe, load_recipes, parse_recipe

__all__ = [
    "BUNDLED",
    "RELOAD_SENTINEL",
    "Backend",
    "BackendError",
    "Decision",
    "Envelope",
    "Evaluator",
    "Firing",
    "LoadReport",
    "LocalBackend",
    "OllamaBackend",
    "OpenAIBackend",
    "Pipeline",
    "Recipe",
    "RecipeError",
    "Thrall",
    "Verdict",
    "load_recipe",
    "load_recipes",
    "parse_recipe",
]
