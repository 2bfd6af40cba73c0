"""The pure parts: backoff arithmetic, versions and specifiers, event lines, checksums."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from knarr.watchman.config import RecoveryConfig
from knarr.watchman.events import EventLog, Outbox, WatchmanEvent, say
from knarr.watchman.recovery import GiveUp, Restart, RestartBudget, backoff_for
from knarr.watchman.releases import parse_checksums
from knarr.watchman.vault import base58
from knarr.watchman.versions import parse_version, parse_wheel_name, satisfies


def test_backoff_doubles_from_initial_to_max() -> None:
    cfg = RecoveryConfig(initial_backoff=5, max_backoff=300)
    assert [backoff_for(n, cfg) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert backoff_for(10_000, cfg) == 300
    assert backoff_for(3, RecoveryConfig(initial_backoff=0, max_backoff=0)) == 0


def test_budget_gives_up_after_max_restarts_and_resets_after_healthy_uptime() -> None:
    budget = RestartBudget(RecoveryConfig(max_restarts=2, initial_backoff=1, max_backoff=10,
                                          backoff_reset_uptime=60))
    assert budget.after_exit(0) == Restart(1, 1)
    assert budget.after_exit(59) == Restart(2, 2)
    assert budget.after_exit(0) == GiveUp(2)
    budget = RestartBudget(RecoveryConfig(max_restarts=2, initial_backoff=1,
                                          backoff_reset_uptime=60))
    budget.after_exit(0)
    budget.after_exit(0)
    assert budget.after_exit(60) == Restart(1, 1)  # it ran healthy long enough
    assert budget.total == 3
    budget.note_healthy(61)
    assert budget.attempt == 0
    assert RestartBudget(RecoveryConfig(max_restarts=0)).after_exit(0) == GiveUp(0)


@pytest.mark.parametrize("ordered", [
    ["0.9", "0.10.0", "1.0.dev1", "1.0a1", "1.0b2", "1.0rc1", "1.0", "1.0.post1", "1.0.1"],
    ["v0.45.9", "v0.46.0", "0.51.1"],
])
def test_versions_sort_like_pep_440(ordered: list[str]) -> None:
    assert sorted(reversed(ordered), key=parse_version) == ordered
    assert parse_version("v1.0") == parse_version("1.0.0") or \
        parse_version("v1.0").key == parse_version("1.0.0").key


@pytest.mark.parametrize(("version", "spec", "ok"), [
    ("1.2.0", ">=1.0.0", True), ("0.9", ">=1.0.0", False), ("1.5", ">=1.0, <2", True),
    ("2.0", ">=1.0,<2", False), ("1.4.2", "~=1.4", True), ("2.0", "~=1.4", False),
    ("1.4.7", "==1.4.*", True), ("1.5.0", "!=1.5.0", False), ("3", "", True),
])
def test_specifiers(version: str, spec: str, ok: bool) -> None:
    assert satisfies(version, spec) is ok


def test_specifier_and_wheel_name_errors() -> None:
    with pytest.raises(ValueError):
        satisfies("1.0", "=>1.0")
    with pytest.raises(ValueError):
        parse_wheel_name("knarr-0.2.0.tar.gz")
    name = parse_wheel_name("Knarr_BCW-1.2.0-py3-none-any.whl")
    assert (name.project, name.version) == ("knarr-bcw", "1.2.0")


def test_event_lines_and_payloads() -> None:
    event = WatchmanEvent("WATCHMAN_RESTART", (("attempt", 2), ("backoff", "10s")), 1000.0)
    assert event.line() == "WATCHMAN_RESTART attempt=2 backoff=10s"
    payload = event.payload()
    assert payload["event"] == "WATCHMAN_RESTART" and payload["attempt"] == 2
    assert payload["at"] == 1000.0 and payload["detail"] == "attempt=2 backoff=10s"
    spaced = WatchmanEvent("UPGRADE_ROLLBACK", (("reason", "no answer in 30 s"),), 0.0)
    assert spaced.line() == 'UPGRADE_ROLLBACK reason="no answer in 30 s"'
    assert WatchmanEvent("WATCHMAN_STOP", (), 0).line() == "WATCHMAN_STOP"


def test_outbox_keeps_order_and_drops_the_oldest_past_its_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("knarr.watchman.events.OUTBOX_LIMIT", 3)
    outbox = Outbox(tmp_path / "outbox")
    log = EventLog(outbox, clock=lambda: 5.0)
    for n in range(5):
        log.emit("WATCHMAN_RESTART", attempt=n)
    assert capsys.readouterr().out.splitlines()[-1] == "WATCHMAN_RESTART attempt=4"
    assert [body["attempt"] for _, body in outbox.pending()] == [2, 3, 4]
    (tmp_path / "outbox" / "0-garbage.json").write_text("{not json")
    assert len(outbox.pending()) == 3
    path, body = outbox.pending()[0]
    assert json.loads(path.read_text()) == body


class _Writes(io.StringIO):
    """A stream that remembers each write call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_event_and_progress_lines_are_written_whole(tmp_path: Path) -> None:
    """The watchman and the upgrade process it starts share a stdout; with unbuffered
    output each write reaches it at once, so a line split in two writes could be cut
    by the other process's line (seen as "...drain up to 10 s)...UPGRADE_START ...")."""
    out = _Writes()
    EventLog(Outbox(tmp_path / "outbox"), out=out, clock=lambda: 5.0).emit(
        "UPGRADE_START", to="0.2.0")
    say("Switching the running node (drain up to 10 s)...", out)
    assert out.calls == ["UPGRADE_START to=0.2.0\n",
                         "Switching the running node (drain up to 10 s)...\n"]


def test_checksums_and_base58() -> None:
    text = f"{'ab' * 32}  knarr-0.2.0-py3-none-any.whl\n{'cd' * 32} *other.whl\njunk line\n"
    assert parse_checksums(text) == {"knarr-0.2.0-py3-none-any.whl": "ab" * 32,
                                     "other.whl": "cd" * 32}
    assert base58(b"\0\0\x01") == "112"
    assert base58(bytes.fromhex("0000287fb4cd")) == "11233QC4"
