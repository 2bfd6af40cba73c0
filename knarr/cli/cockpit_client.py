"""Talking to a local node's cockpit from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from knarr.errors import NetworkError

SOCKET_NAME = "cockpit.sock"


def find_socket(data_dir: str | None = None) -> Path | None:
    """The cockpit socket of the project here (beside ./node.db) or in ``data_dir``."""
    folder = Path(data_dir) if data_dir else Path.cwd()
    path = folder / SOCKET_NAME
    return path if path.exists() else None


async def cockpit_request(
    socket_path: Path, method: str, path: str, body: Any = None, timeout: float = 30
) -> Any:
    """One JSON request over the cockpit's Unix socket."""
    import aiohttp

    try:
        connector = aiohttp.UnixConnector(path=str(socket_path))
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as session, session.request(
            method, f"http://cockpit{path}", json=body
        ) as response:
            data = await response.json(content_type=None)
            if response.status >= 400:
                detail = data.get("error") if isinstance(data, dict) else data
                raise NetworkError(f"the node refused: {detail}")
            return data
    except (aiohttp.ClientError, OSError, json.JSONDecodeError) as exc:
        raise NetworkError(f"cannot reach the node's cockpit at {socket_path}: {exc}") from exc
