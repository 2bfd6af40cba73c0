"""Mail between real nodes on loopback triggers recipes: a reply travels back, and the
sender's trust tier (from config) decides the bypass."""

from __future__ import annotations

from pathlib import Path

import pytest

from knarr.config import ThrallConfig, ThrallTrustTiers
from tests.conftest import NodeFactory, wait_for
from tests.recipes.conftest import ThrallFactory, write

pytestmark = pytest.mark.slow

PINGPONG = """
[trigger]
type = "on_mail"
msg_types = ["text"]

[filter]
trust_bypass = true
bypass_action = "wake"

[evaluate]
default_action = "drop"

[[evaluate.rules]]
field = "body_text"
pattern = "^ping"
action = "reply"

[actions.reply]
template = "pong: {{body_text}}"
msg_type = "pong"
"""


async def test_a_mail_fires_a_recipe_that_replies_across_the_network(
    make_node: NodeFactory, make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    alice = await make_node()
    bob = await make_node()
    await bob.join([f"127.0.0.1:{alice.port}"])
    write(tmp_path / "recipes", "pingpong.toml", PINGPONG)
    thrall = await make_thrall(bob)
    alice.send_mail(bob.node_id, "ping 42")
    await wait_for(lambda: any(m.type == "pong" for m in alice.mailbox.inbox()))
    [reply] = alice.mailbox.inbox()
    assert (reply.peer, reply.body) == (bob.node_id, "pong: ping 42")
    await thrall.idle()
    [firing] = [j for j in bob.journal("recipe") if j["event"] == "fired"]
    assert firing["from_node"] == alice.node_id and firing["action"] == "reply"
    assert firing["tier"] == "unknown"


async def test_a_team_node_bypasses_the_rules(
    make_node: NodeFactory, make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    alice = await make_node()
    bob = await make_node()
    await bob.join([f"127.0.0.1:{alice.port}"])
    write(tmp_path / "recipes", "pingpong.toml", PINGPONG)
    config = ThrallConfig(enabled=True, bundled=False,
                          trust_tiers=ThrallTrustTiers(team=(alice.node_id[:16],)))
    thrall = await make_thrall(bob, config=config)
    alice.send_mail(bob.node_id, "ping from the team")
    await wait_for(lambda: any(e.type == "thrall.wake" for e in bob.events.since(0) or []))
    await thrall.idle()
    [firing] = [j for j in bob.journal("recipe") if j["event"] == "fired"]
    assert (firing["tier"], firing["evaluation"], firing["action"]) == ("team", "bypass", "wake")
    assert alice.mailbox.inbox() == []
