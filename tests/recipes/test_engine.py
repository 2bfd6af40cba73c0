"""Thrall on a node: every action, gather, ticks, manual mode, records, hot reload and
the cockpit. Events go through ``node.events`` exactly as the node emits them."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from knarr.cli.cockpit_client import cockpit_request
from knarr.config import ThrallConfig
from knarr.node.node import Node
from knarr.recipes.engine import RELOAD_SENTINEL
from tests.conftest import NodeFactory, sheet, wait_for
from tests.recipes.conftest import PEER, Clock, ThrallFactory, write


def fired(node: Node, event: str = "fired") -> list[dict[str, Any]]:
    return [j for j in reversed(node.journal("recipe")) if j["event"] == event]


def emitted(node: Node, kind: str) -> list[dict[str, Any]]:
    found = node.events.since(0) or []
    return [e.data for e in found if e.type == kind]


ON_DEMAND = """
[trigger]
type = "on_event"
events = ["demand"]

[evaluate]
default_action = "{action}"

[[evaluate.rules]]
field = "name"
pattern = "^ignored$"
action = "drop"
"""


async def test_a_firing_is_recorded_with_its_whole_path(
    make_thrall: ThrallFactory, tmp_path: Path, clock: Clock
) -> None:
    write(tmp_path / "recipes", "demand-log.toml", ON_DEMAND.format(action="log"))
    thrall = await make_thrall(clock=clock)
    node = thrall.node
    node.events.emit("demand", kind="skill", name="translate")
    await thrall.idle()
    [firing] = fired(node)
    assert firing["recipe"] == "demand-log" and firing["trigger"] == "on_event"
    assert firing["source"] == "demand"
    assert firing["inputs"] == "demand kind=skill name=translate"
    assert firing["evaluation"] == "hotwire" and firing["verdict"] == "log"
    assert firing["action"] == "log" and firing["backend"] == "none" and firing["ok"] is True
    assert firing["path"] == ["trigger on_event (demand)", "filter: pass (tier unknown)",
                              "hotwire: no rule matched, default", "action log (log): logged"]
    assert 0 <= firing["latency_ms"] < 1000 and firing["time"] == clock.now
    # ... and streamed as a "recipe" event, as the console expects
    [streamed] = [e for e in emitted(node, "recipe") if e.get("event") == "fired"]
    assert streamed["recipe"] == "demand-log" and streamed["action"] == "log"
    [start] = fired(node, "start")
    assert start["detail"] == "1 recipes loaded; backend none"


async def test_drops_are_recorded_unless_the_action_says_not_to(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    write(tmp_path / "recipes", "loud.toml", ON_DEMAND.format(action="log"))
    write(tmp_path / "recipes", "quiet.toml",
          ON_DEMAND.format(action="drop") + "[actions.drop]\nrecord = false\n")
    thrall = await make_thrall()
    thrall.node.events.emit("demand", kind="skill", name="ignored")
    await thrall.idle()
    assert [(f["recipe"], f["action"]) for f in fired(thrall.node)] == [("loud", "drop")]
    assert thrall.stats["fired"] == 2


async def test_log_writes_a_log_line(
    make_thrall: ThrallFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "recipes", "d.toml", ON_DEMAND.format(action="log"))
    thrall = await make_thrall()
    with caplog.at_level(logging.INFO, logger="knarr.thrall"):
        thrall.node.events.emit("demand", kind="skill", name="ocr")
        await thrall.idle()
    assert "THRALL d: demand kind=skill name=ocr (no rule matched)" in caplog.text


COMPILE = """
[trigger]
type = "on_mail"

[evaluate]
default_action = "compile"

[actions.compile]
buffer = "inbox"
summon_threshold = 3
summon_keywords = ["URGENT"]
flush_seconds = 600
"""


async def test_compile_flushes_at_the_threshold_and_summons(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    write(tmp_path / "recipes", "digest.toml", COMPILE)
    thrall = await make_thrall()
    node = thrall.node
    for i in range(3):
        node.events.emit("mail.received", id=f"{i:032x}", sender=PEER, type="text",
                         body=f"note {i}")
    await thrall.idle()
    details = [f["detail"] for f in fired(node)]
    assert details[:2] == ["added to digest 'inbox' (1 waiting)",
                           "added to digest 'inbox' (2 waiting)"]
    assert details[2] == "flushed digest 'inbox': 3 items (threshold 3/3); operator summoned"
    [summon] = emitted(node, "thrall.summon")
    assert summon["buffer"] == "inbox" and summon["count"] == 3
    assert summon["senders"] == [PEER[:16]] and len(summon["items"]) == 3
    assert fired(node)[2]["digest"]["count"] == 3
    assert thrall.actions.buffers == {}


async def test_compile_flushes_at_once_on_a_keyword(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    write(tmp_path / "recipes", "digest.toml", COMPILE)
    thrall = await make_thrall()
    thrall.node.events.emit("mail.received", id="0" * 32, sender=PEER, type="text",
                            body="routine")
    thrall.node.events.emit("mail.received", id="1" * 32, sender=PEER, type="text",
                            body="this is urgent!")
    await thrall.idle()
    assert fired(thrall.node)[-1]["detail"] == \
        "flushed digest 'inbox': 2 items (keyword 'urgent'); operator summoned"


async def test_compile_flushes_on_a_timer(
    make_thrall: ThrallFactory, tmp_path: Path, clock: Clock
) -> None:
    write(tmp_path / "recipes", "digest.toml", COMPILE)
    thrall = await make_thrall(clock=clock)
    thrall.node.events.emit("mail.received", id="0" * 32, sender=PEER, type="text", body="a")
    await thrall.idle()
    clock.advance(599)
    await thrall.housekeeping()
    assert fired(thrall.node, "digest") == []
    clock.advance(1)
    await thrall.housekeeping()
    [digest] = fired(thrall.node, "digest")
    assert digest["recipe"] == "digest" and digest["action"] == "summon"
    assert digest["detail"] == "flushed digest 'inbox': 1 items (timer); operator summoned"


async def test_wake_notifies_the_operator(
    make_thrall: ThrallFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "recipes", "w.toml", """
        [trigger]
        type = "on_mail"
        [evaluate]
        default_action = "wake"
        [actions.wake]
        message = "{{msg_type}} from {{from_node}}: {{body_text}}"
    """)
    thrall = await make_thrall()
    with caplog.at_level(logging.WARNING, logger="knarr.thrall"):
        thrall.node.events.emit("mail.received", id="0" * 32, sender=PEER, type="text",
                                body="server down")
        await thrall.idle()
    [wake] = emitted(thrall.node, "thrall.wake")
    assert wake["summary"] == f"text from {PEER}: server down"
    assert wake["recipe"] == "w" and wake["from_node"] == PEER
    assert f"THRALL WAKE from w: text from {PEER}: server down" in caplog.text
    assert fired(thrall.node)[0]["action"] == "wake"


async def test_summon_is_wake_by_another_name(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    write(tmp_path / "recipes", "s.toml", ON_DEMAND.format(action="summon"))
    thrall = await make_thrall()
    thrall.node.events.emit("demand", kind="tag", name="nlp")
    await thrall.idle()
    assert emitted(thrall.node, "thrall.wake")[0]["summary"] == "demand kind=tag name=nlp"


async def test_reply_mails_the_sender(make_thrall: ThrallFactory, tmp_path: Path) -> None:
    write(tmp_path / "recipes", "r.toml", """
        [trigger]
        type = "on_mail"
        msg_types = ["text"]
        [evaluate]
        default_action = "reply"
        [actions.reply]
        template = "Got your note: {{body_text}}"
        msg_type = "ack"
    """)
    thrall = await make_thrall()
    thrall.node.events.emit("mail.received", id="0" * 32, sender=PEER, type="text", body="hi")
    await thrall.idle()
    [queued] = thrall.node.mailbox.outbox()
    assert queued["to"] == PEER and queued["type"] == "ack"
    rows = thrall.node.store.execute("SELECT body FROM mail_out")
    assert rows[0][0] == '"Got your note: hi"'
    assert fired(thrall.node)[0]["mail_id"] == queued["id"]


async def test_reply_without_a_sender_fails_cleanly(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    write(tmp_path / "recipes", "r.toml", ON_DEMAND.format(action="reply"))
    thrall = await make_thrall()
    thrall.node.events.emit("demand", kind="skill", name="x")
    await thrall.idle()
    [firing] = fired(thrall.node)
    assert firing["ok"] is False and "no one to reply to" in firing["detail"]


ACT = """
[trigger]
type = "on_mail"

[evaluate]
default_action = "shout"

[actions.shout]
skill = "{skill}"
local = {local}
input = {{ text = "{{{{body_text}}}}", nested = ["{{{{msg_type}}}}"] }}
error_buffer = "act-errors"
"""


async def test_act_calls_a_local_skill(make_thrall: ThrallFactory, tmp_path: Path) -> None:
    write(tmp_path / "recipes", "a.toml", ACT.format(skill="shout", local="true"))
    thrall = await make_thrall()
    seen: list[dict[str, Any]] = []

    async def shout(data: dict[str, Any]) -> dict[str, Any]:
        seen.append(data)
        return {"text": str(data["text"]).upper()}

    thrall.node.register_handler("shout", shout)
    thrall.node.events.emit("mail.received", id="0" * 32, sender=PEER, type="text", body="hi")
    await thrall.idle()
    assert seen == [{"text": "hi", "nested": ["text"]}]
    [firing] = fired(thrall.node)
    assert firing["action"] == "act" and firing["output"] == {"text": "HI"}
    assert firing["detail"] == 'shout answered {"text": "HI"}'


async def test_act_failures_are_recorded_and_buffered(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    write(tmp_path / "recipes", "a.toml", ACT.format(skill="missing", local="true"))
    write(tmp_path / "recipes", "b.toml", ACT.format(skill="crash", local="true"))
    thrall = await make_thrall()

    def crash(data: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("boom")

    thrall.node.register_handler("crash", crash)
    thrall.node.events.emit("mail.received", id="0" * 32, sender=PEER, type="text", body="hi")
    await thrall.idle()
    by_recipe = {f["recipe"]: f for f in fired(thrall.node)}
    assert by_recipe["a"]["ok"] is False
    assert "no skill named 'missing' is registered" in by_recipe["a"]["detail"]
    assert by_recipe["b"]["detail"] == "action failed: boom"  # a bug, recorded, not fatal
    assert [e["summary"] for e in thrall.actions.buffers["act-errors"].entries] == [
        "missing failed: no skill named 'missing' is registered on this node"]


@pytest.mark.slow
async def test_act_calls_a_skill_on_the_network(
    make_node: NodeFactory, make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    requester = await make_node()
    provider = await make_node()
    await provider.join([f"127.0.0.1:{requester.port}"])

    async def upper(data: dict[str, Any]) -> dict[str, Any]:
        return {"text": str(data["text"]).upper()}

    provider.register_handler("upper", upper)
    await provider.announce({**sheet("upper"), "price": 0.5})
    write(tmp_path / "recipes", "a.toml", ACT.format(skill="upper", local="false")
          .replace(', nested = ["{{msg_type}}"]', ""))
    thrall = await make_thrall(requester)
    requester.events.emit("mail.received", id="0" * 32, sender=PEER, type="text", body="hey")
    await thrall.idle()
    [firing] = fired(requester)
    assert firing["ok"] is True and firing["output"] == {"text": "HEY"}
    [receipt] = requester.ledger.receipts()
    assert receipt["skill"] == "upper" and receipt["charged"] == 0.5


async def test_manual_mode_records_what_it_would_do(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    write(tmp_path / "recipes", "m.toml", 'mode = "manual"\n' + """
        [trigger]
        type = "on_mail"
        [evaluate]
        default_action = "reply"
    """)
    thrall = await make_thrall()
    thrall.node.events.emit("mail.received", id="0" * 32, sender=PEER, type="text", body="hi")
    await thrall.idle()
    assert fired(thrall.node)[0]["detail"] == "manual mode: would reply (reply)"
    assert thrall.node.mailbox.outbox() == []


async def test_gather_adds_node_state_recent_mail_and_static_text(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    write(tmp_path / "recipes", "g.toml", """
        [trigger]
        type = "on_mail"
        msg_types = ["question"]
        [gather]
        node = ["peer_count", "mail_outbox_pending", "peer_balance"]
        mail = 2
        text = "office hours 9-5"
        [evaluate]
        default_action = "wake"
        [actions.wake]
        message = "peers={{peer_count}} out={{mail_outbox_pending}} bal={{peer_balance}} | {{static_text}} | {{recent_mail}}"
    """)  # noqa: E501
    thrall = await make_thrall()
    node = thrall.node
    for i, body in enumerate(["first", "second", "third"]):
        node.mailbox.receive(f"{i:032x}", PEER, "text", body, 0.0)
    node.send_mail(PEER, "pending", "text")
    node.events.emit("mail.received", id="9" * 32, sender=PEER, type="question", body="?")
    await thrall.idle()
    [wake] = emitted(node, "thrall.wake")
    assert wake["summary"] == ("peers=0 out=1 bal=0 | office hours 9-5 | "
                               "[text] second\n[text] third")


async def test_on_tick_recipes_fire_on_their_interval_with_deltas(
    make_thrall: ThrallFactory, tmp_path: Path, clock: Clock
) -> None:
    write(tmp_path / "recipes", "t.toml", """
        [trigger]
        type = "on_tick"
        interval = 60
        [evaluate]
        default_action = "drop"
        [[evaluate.rules]]
        field = "dht_invalid_delta"
        pattern = "^[1-9]"
        action = "wake"
        [actions.wake]
        message = "{{dht_invalid_delta}} rejected, {{dht_invalid}} in all"
    """)
    thrall = await make_thrall(clock=clock)
    node = thrall.node
    clock.advance(60)
    assert [f.action for f in await thrall.tick()] == ["drop"]
    node.dht.stats.invalid += 7
    clock.advance(30)
    assert await thrall.tick() == []
    clock.advance(30)
    [firing] = await thrall.tick()
    assert firing.action == "wake" and firing.trigger == "on_tick" and firing.source == "tick"
    assert emitted(node, "thrall.wake")[0]["summary"] == "7 rejected, 7 in all"
    clock.advance(60)
    assert [f.action for f in await thrall.tick()] == ["drop"]  # the delta is back to 0


async def test_thralls_own_events_never_trigger_recipes(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    write(tmp_path / "recipes", "all.toml", ON_DEMAND.replace('events = ["demand"]',
                                                            'events = ["thrall.*", "demand"]')
          .format(action="wake"))
    thrall = await make_thrall()
    thrall.node.events.emit("demand", kind="skill", name="a")
    await thrall.idle()
    # its wake emitted thrall.wake and recorded a "recipe" event: neither fired it again
    assert len(fired(thrall.node)) == 1
    thrall.node.events.emit("thrall.custom", queue_depth=1)
    await thrall.idle()
    assert len(fired(thrall.node)) == 2


async def test_dropped_events_raise_backpressure(
    make_thrall: ThrallFactory, tmp_path: Path, clock: Clock
) -> None:
    bundled = Path(__file__).parents[2] / "knarr/recipes/bundled/queue-backpressure.toml"
    write(tmp_path / "recipes", "queue-backpressure.toml", bundled.read_text())
    thrall = await make_thrall(clock=clock, queue_size=2)
    for i in range(10):  # no await between them: the queue holds 2
        thrall.node.events.emit("demand", kind="skill", name=str(i))
    assert thrall.stats["dropped_events"] == 8
    clock.advance(60)
    await thrall.housekeeping()
    await thrall.idle()
    [firing] = fired(thrall.node)
    assert firing["recipe"] == "queue-backpressure" and firing["action"] == "wake"
    assert "bus_drop_rate=80" in firing["inputs"]


async def test_firings_are_visible_through_the_cockpit(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    node = Node("127.0.0.1", 0, cockpit_dir=tmp_path / "data")
    await node.start()
    try:
        write(tmp_path / "recipes", "d.toml", ON_DEMAND.format(action="wake"))
        thrall = await make_thrall(node)
        node.events.emit("demand", kind="skill", name="ocr")
        await thrall.idle()
        socket = tmp_path / "data" / "cockpit.sock"
        rows = await cockpit_request(socket, "GET", "/v1/recipes")
        firing = next(r for r in rows if r["event"] == "fired")
        assert firing["recipe"] == "d" and firing["action"] == "wake"
        assert firing["path"][-1].startswith("action wake (wake): operator notified")
    finally:
        await thrall.stop()
        await node.stop()


# ------------------------------------------------------------------------ hot reload

V1 = ON_DEMAND.format(action="log")
V2 = ON_DEMAND.format(action="wake")


async def test_touching_the_sentinel_reloads_recipes(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "recipes"
    write(folder, "d.toml", V1)
    thrall = await make_thrall()
    assert thrall.recipes["d"].evaluate.default_action == "log"
    write(folder, "d.toml", V2)
    await thrall.housekeeping()
    assert thrall.recipes["d"].evaluate.default_action == "log"  # no sentinel, no reload
    (folder / RELOAD_SENTINEL).touch()
    await thrall.housekeeping()
    assert thrall.recipes["d"].evaluate.default_action == "wake"
    [reload] = fired(thrall.node, "reload")
    assert reload["detail"] == "1 recipes loaded" and reload["ok"] is True


async def test_a_broken_edit_keeps_the_previous_version_and_says_why(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "recipes"
    write(folder, "d.toml", V1)
    write(folder, "gone.toml", V1)
    thrall = await make_thrall()
    write(folder, "d.toml", V1.replace('pattern = "^ignored$"', 'pattern = "(broken"'))
    write(folder, "new.toml", V1.replace("on_event", "on_evnt"))
    (folder / "gone.toml").unlink()
    report = await thrall.reload()
    assert sorted(thrall.recipes) == ["d"]
    assert thrall.recipes["d"].evaluate.rules[0].pattern.pattern == "^ignored$"
    assert report.removed == ["gone"] and list(report.rejected) == ["new"]
    assert "d.toml: evaluate.rules[0].pattern: bad regex" in report.kept["d"]
    [record] = fired(thrall.node, "reload")
    assert record["ok"] is False
    assert "kept the previous version" in record["detail"]
    assert "new.toml: trigger.type: expected one of" in record["detail"]
    # the old version still fires
    thrall.node.events.emit("demand", kind="skill", name="x")
    await thrall.idle()
    assert fired(thrall.node)[0]["recipe"] == "d"
    # fixing the file and touching the sentinel again picks it up
    write(folder, "d.toml", V2)
    sentinel = folder / RELOAD_SENTINEL
    sentinel.touch()
    os.utime(sentinel, ns=(1, 1))
    await thrall.housekeeping()
    assert thrall.recipes["d"].evaluate.default_action == "wake"


async def test_a_broken_prompt_edit_keeps_the_previous_prompt(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    prompts = tmp_path / "recipes" / "prompts"
    write(prompts, "mine.toml", 'content = "v1 {{body_text}}"\n')
    thrall = await make_thrall()
    write(prompts, "mine.toml", 'content = "v2"\nbogus = 1\n')
    report = await thrall.reload()
    assert thrall.prompts["mine"].content == "v1 {{body_text}}"
    assert "mine.toml: bogus: unknown key" in report.kept["prompt:mine"]


async def test_config_reload_applies_trust_tiers(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    from knarr.config import ThrallTrustTiers

    write(tmp_path / "recipes", "t.toml", """
        [trigger]
        type = "on_mail"
        [filter]
        trust_bypass = true
        bypass_action = "wake"
        [evaluate]
        default_action = "drop"
    """)
    new = ThrallConfig(enabled=True, bundled=False,
                       trust_tiers=ThrallTrustTiers(team=(PEER[:16],)))
    thrall = await make_thrall(reload_config=lambda: new)
    thrall.node.events.emit("mail.received", id="0" * 32, sender=PEER, type="text", body="x")
    await thrall.idle()
    await thrall.reload()
    thrall.node.events.emit("mail.received", id="1" * 32, sender=PEER, type="text", body="x")
    await thrall.idle()
    assert [(f["tier"], f["action"]) for f in fired(thrall.node)] == [
        ("unknown", "drop"), ("team", "wake")]


async def test_a_broken_config_keeps_the_previous_settings(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    from knarr.errors import ConfigError

    def broken() -> ThrallConfig:
        raise ConfigError("knarr.toml: thrall.backend: expected one of ...")

    thrall = await make_thrall(reload_config=broken)
    report = await thrall.reload()
    assert report.config_error.startswith("knarr.toml: thrall.backend")
    assert "kept the previous [thrall] settings" in fired(thrall.node, "reload")[0]["detail"]


async def test_the_bundled_set_loads_beside_the_user_folder(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    write(tmp_path / "recipes", "mail-triage.toml", 'mode = "disabled"\n' + V1)
    thrall = await make_thrall(config=ThrallConfig(enabled=True))
    assert len(thrall.recipes) >= 12
    assert thrall.recipes["mail-triage"].mode == "disabled"


async def test_the_engine_runs_on_a_started_node_and_stops_cleanly(
    make_node: NodeFactory, make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    node = await make_node()
    write(tmp_path / "recipes", "peers.toml", """
        [trigger]
        type = "on_event"
        events = ["peer.added"]
        [evaluate]
        default_action = "log"
    """)
    await make_thrall(node, poll_interval=0.01)
    other = await make_node()
    await other.join([f"127.0.0.1:{node.port}"])
    await wait_for(lambda: bool(fired(node)))
    assert fired(node)[0]["from_node"] == other.node_id
