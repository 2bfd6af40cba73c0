"""The running watchman's state, for ``status`` in another process: one JSON file in
``DATA_DIR/watchman/``, replaced atomically on every change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from knarr.watchman.events import write_atomic

STATE_NAME = "state.json"


def write_state(state_dir: Path, state: dict[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(state_dir / STATE_NAME, json.dumps(state, indent=2, default=str).encode(),
                 0o644)


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """The last state written, or ``None`` if there is none (or it is unreadable)."""
    try:
        data = json.loads((state_dir / STATE_NAME).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
