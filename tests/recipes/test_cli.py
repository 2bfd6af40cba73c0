"""``knarr thrall ...`` as a user runs it, and ``knarr serve`` with ``[thrall] enabled``."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from knarr.cli.main import main
from knarr.config import ThrallConfig
from knarr.node.identity import Identity
from knarr.node.node import Node
from knarr.node.store import Store
from knarr.recipes import delegate
from knarr.recipes.engine import Thrall
from tests.recipes.conftest import PEER, write

KNARR = [sys.executable, "-m", "knarr.cli.main"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def recorded_node(tmp_path: Path) -> None:
    """A stopped node whose database holds a few firings."""
    write(tmp_path / "recipes", "greet.toml", """
        [trigger]
        type = "on_mail"
        [evaluate]
        default_action = "log"
        [[evaluate.rules]]
        field = "body_text"
        pattern = "help"
        action = "wake"
    """)
    node = Node("127.0.0.1", 0, storage=tmp_path / "node.db")
    thrall = Thrall(node, ThrallConfig(enabled=True, bundled=False), base_dir=tmp_path)
    await thrall.start()
    for i, body in enumerate(["hi", "help!"]):
        node.events.emit("mail.received", id=f"{i:032x}", sender=PEER, type="text", body=body)
    await thrall.idle()
    await thrall.stop()
    await node.stop()


def test_firings_lists_what_fired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(recorded_node(tmp_path))
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "thrall", "firings", "--json")
    rows = json.loads(out)
    assert code == 0
    assert [(r["event"], r.get("action")) for r in rows] == [
        ("fired", "wake"), ("fired", "log"), ("start", "start")]
    assert rows[0]["path"][-1].startswith("action wake (wake): operator notified")
    code, out, _ = run(capsys, "thrall", "firings", "--limit", "2")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert "greet" in lines[1] and "hotwire" in lines[1] and "wake" in lines[1]


def test_firings_without_a_database_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "thrall", "firings")
    assert code == 1 and err.startswith("error: node.db: no node database here")


def test_test_prints_the_path_an_event_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    event = json.dumps({"sender": PEER, "type": "error", "body": "FATAL: disk"})
    code, out, _ = run(capsys, "thrall", "test", "mail-digest", "--event", event)
    assert code == 0
    assert out.splitlines()[1:] == [
        "trigger   on_mail fires for 'mail.received' (msg_types delivery, status, error, "
        "digest)",
        "filter    pass (tier unknown)",
        "evaluate  hotwire rule 0: body_text =~ /\\b(fatal|outage|data loss)\\b/",
        f"action    wake: notify the operator: error mail from {PEER}: FATAL: disk",
    ]
    code, out, _ = run(capsys, "thrall", "test", "mail-digest", "--json", "--event",
                       json.dumps({"type": "text", "body": "x"}))
    result = json.loads(out)
    assert result["verdict"] is None and result["steps"][-1]["text"].startswith(
        "on_mail does not fire for 'mail.received' (msg_types delivery")


def test_test_on_a_file_an_event_and_a_tick(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "mine.toml", """
        [trigger]
        type = "on_event"
        events = ["task.*"]
        [filter]
        cooldown_seconds = 60
        [gather]
        node = ["peer_balance"]
        [evaluate]
        default_action = "drop"
        [[evaluate.rules]]
        field = "outcome"
        pattern = "failed"
        action = "act"
        [actions.act]
        skill = "restart"
        input = { who = "{{provider}}" }
    """)
    code, out, _ = run(capsys, "thrall", "test", str(path), "--event",
                       json.dumps({"type": "task.consumed", "provider": PEER,
                                   "outcome": "failed"}))
    assert code == 0
    assert "gather    node peer_balance=0 (assumed 0: peer_balance)" in out
    assert "action    act: call skill 'restart' on the network with" in out
    code, out, _ = run(capsys, "thrall", "test", "health-check", "--event",
                       json.dumps({"mail_outbox_pending": 75}))
    assert out.splitlines()[-1] == \
        "action    wake: notify the operator: 75 mails are waiting for delivery"
    code, out, _ = run(capsys, "thrall", "test", "mail-triage", "--event",
                       json.dumps({"sender": PEER, "body": "URGENT"}))
    assert "no backend is configured: fallback 'compile'" in out
    assert "'URGENT' is a keyword: flushed now, the operator summoned" in out


@pytest.mark.parametrize(("argv", "error"), [
    (["thrall", "test", "mail-triage", "--event", "{nope"], "error: --event is not valid JSON"),
    (["thrall", "test", "nothing-here", "--event", "{}"], "error: no recipe named 'nothing-here'"),
    (["thrall", "test", "x.toml", "--event", "{}"], "error: x.toml: no such recipe file"),
])
def test_test_mistakes_are_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    argv: list[str], error: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 1 and err.startswith(error) and len(err.splitlines()) == 1


def test_recipes_lists_the_set_and_what_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "knarr.toml").write_text('[thrall]\nrecipes_dir = "mine"\n')
    write(tmp_path / "mine", "oops.toml", '[trigger]\ntype = "on_mail"\n[evaluate]\n'
          'default_action = "explode"\n')
    code, out, _ = run(capsys, "thrall", "recipes")
    assert code == 1
    assert out.splitlines()[-1] == (
        f"error: {tmp_path / 'mine' / 'oops.toml'}: evaluate.default_action: unknown action "
        '"explode": expected one of "drop", "log", "compile", "wake", "summon", "reply", '
        '"act", "settle" or an [actions.explode] table')
    assert any(line.startswith("security-alert") for line in out.splitlines())


def test_delegate_issues_and_revoke_deletes_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "node.db")
    identity = Identity.load_or_create(store)
    store.close()
    code, out, _ = run(capsys, "thrall", "delegate", "--ceiling", "25", "--days", "2")
    assert code == 0
    assert f"may settle for node {identity.node_id_hex[:16]}… up to 25 credits a day" in out
    delegation = delegate.load(tmp_path / "thrall_delegate.key", identity)
    assert delegation is not None and delegation.certificate.ceiling == 25_000_000
    code, out, _ = run(capsys, "thrall", "revoke")
    assert code == 0 and not (tmp_path / "thrall_delegate.key").exists()
    code, out, _ = run(capsys, "thrall", "revoke")
    assert out.startswith("No delegate key at")


@pytest.mark.slow
async def test_serve_runs_thrall_when_enabled(tmp_path: Path) -> None:
    (tmp_path / "knarr.toml").write_text(
        '[node]\nport = 0\nhost = "127.0.0.1"\nsidecar_port = 0\n'
        '[network]\nbootstrap = []\nupnp = false\n'
        '[thrall]\nenabled = true\nbundled = false\n'
    )
    write(tmp_path / "recipes", "beat.toml", """
        [trigger]
        type = "on_tick"
        interval = 0.2
        [evaluate]
        default_action = "log"
    """)
    proc = await asyncio.create_subprocess_exec(
        *KNARR, "serve", cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    banner: dict[str, str] = {}
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
            if not line:
                break
            key, _, value = line.partition(": ")
            banner[key] = value
        assert banner["Thrall"] == f"1 recipes loaded; backend none (recipes in " \
            f"{tmp_path / 'recipes'})"
        for _ in range(100):
            store = Store(tmp_path / "node.db", readonly=True)
            rows = store.execute("SELECT data FROM journal WHERE event = 'fired'")
            store.close()
            if rows:
                break
            await asyncio.sleep(0.1)
        assert json.loads(rows[0][0])["recipe"] == "beat"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
