"""Asking the running watchman to switch versions: a request file and ``SIGUSR1``.

``upgrade`` prepares the new environment in its own process (the slow, failure-prone
part), then leaves ``requests/ID.json`` and signals the watchman, which owns the node and
does the drain, swap and health check, and answers in ``requests/ID.result.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from knarr.watchman.errors import WatchmanError
from knarr.watchman.events import write_atomic


@dataclass(frozen=True)
class SwitchRequest:
    """``action`` is ``"upgrade"`` (to ``version``, already installed) or ``"rollback"``."""

    id: str
    action: str
    version: str | None = None


@dataclass(frozen=True)
class SwitchResult:
    outcome: str
    """``"success"``, ``"rolled_back"`` or ``"failed"``."""
    detail: str = ""


def _folder(state_dir: Path) -> Path:
    return state_dir / "requests"


def submit(state_dir: Path, pid: int, action: str, version: str | None = None) -> str:
    """Leave a request for the watchman ``pid`` and wake it; returns the request id."""
    folder = _folder(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    request_id = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
    write_atomic(folder / f"{request_id}.json",
                 json.dumps({"action": action, "version": version}).encode())
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        (folder / f"{request_id}.json").unlink(missing_ok=True)
        raise WatchmanError(f"the watchman (pid {pid}) exited before it could switch") from None
    return request_id


def take(state_dir: Path, seen: set[str]) -> list[SwitchRequest]:
    """Requests not yet taken, oldest first."""
    out: list[SwitchRequest] = []
    folder = _folder(state_dir)
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        request_id = path.name.removesuffix(".json")
        if request_id.endswith(".result") or request_id in seen:
            continue
        seen.add(request_id)
        try:
            body = json.loads(path.read_bytes())
            out.append(SwitchRequest(request_id, str(body["action"]), body.get("version")))
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
    return out


def answer(state_dir: Path, request: SwitchRequest, result: SwitchResult) -> None:
    folder = _folder(state_dir)
    write_atomic(folder / f"{request.id}.result.json",
                 json.dumps({"outcome": result.outcome, "detail": result.detail}).encode())
    (folder / f"{request.id}.json").unlink(missing_ok=True)


async def wait_answer(
    state_dir: Path, request_id: str, pid: int, timeout: float
) -> SwitchResult:
    """The watchman's answer, polled until ``timeout`` (it comes from another process)."""
    path = _folder(state_dir) / f"{request_id}.result.json"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            body = json.loads(path.read_bytes())
        except (OSError, ValueError):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                raise WatchmanError(f"the watchman (pid {pid}) exited during the switch"
                                    ) from None
            await asyncio.sleep(0.05)
            continue
        path.unlink(missing_ok=True)
        return SwitchResult(str(body.get("outcome")), str(body.get("detail", "")))
    raise WatchmanError(f"the watchman (pid {pid}) did not finish the switch within "
                        f"{timeout:g} s; see its log")
