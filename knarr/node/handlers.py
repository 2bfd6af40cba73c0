"""Load skill handlers named in ``knarr.toml`` as ``"path/to/file.py:function"``."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from typing import Any

from knarr.config import Config, SkillConfig, check_handlers
from knarr.errors import ConfigError


def load_handler(config: Config, skill: SkillConfig) -> Callable[..., Any]:
    """Import the handler's file (as its own module) and return the function."""
    path = skill.handler_path(config.base_dir).resolve()
    key = f"{config.source}: skills.{skill.name}.handler"
    module_name = f"knarr_skill_{skill.name.replace('-', '_')}_{abs(hash(str(path))):x}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"{key}: cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise ConfigError(
                f"{key}: importing {path.name} failed: {type(exc).__name__}: {exc}"
            ) from exc
    function = getattr(module, skill.handler_function, None)
    if function is None:
        raise ConfigError(f"{key}: {path.name} has no function {skill.handler_function!r}")
    if not callable(function):
        raise ConfigError(f"{key}: {skill.handler_function!r} in {path.name} is not callable")
    if not inspect.iscoroutinefunction(function):
        raise ConfigError(
            f"{key}: {skill.handler_function!r} must be an async function (async def)"
        )
    handler: Callable[..., Any] = function
    return handler


def load_handlers(config: Config) -> dict[str, Callable[..., Any]]:
    """Every skill's handler, checked before any is imported: missing files first."""
    check_handlers(config)
    return {name: load_handler(config, skill) for name, skill in config.skills.items()}


def sheet_of(skill: SkillConfig) -> dict[str, Any]:
    """The announce() sheet for a configured skill."""
    return {
        "name": skill.name,
        "version": "1.0.0",
        "description": skill.description,
        "tags": list(skill.tags),
        "input_schema": dict(skill.input_schema),
        "output_schema": dict(skill.output_schema),
        "visibility": skill.visibility,
        "allowed_nodes": list(skill.allowed_nodes),
        "price": skill.price,
        "max_input_size": skill.max_input_size,
    }
