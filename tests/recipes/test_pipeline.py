"""The decision core with an injected clock: matching, every filter path, hotwire rules
and tick scheduling. No node, no I/O."""

from __future__ import annotations

from knarr.config import ThrallTrustTiers
from knarr.recipes.pipeline import (
    Pipeline,
    event_envelope,
    mail_envelope,
    tick_envelope,
)
from knarr.recipes.recipe import Recipe
from tests.recipes.conftest import KNOWN, PEER, TEAM, Clock, recipe

TIERS = ThrallTrustTiers(team=(TEAM[:16],), known=(KNOWN[:8],))


def pipeline(clock: Clock, *recipes: Recipe) -> Pipeline:
    return Pipeline({r.name: r for r in recipes}, TIERS, clock, tick_interval=60)


MAIL = recipe("""
    [trigger]
    type = "on_mail"
    msg_types = ["text"]

    [evaluate]
    default_action = "log"

    [[evaluate.rules]]
    field = "body_text"
    pattern = "urgent|down"
    action = "wake"

    [[evaluate.rules]]
    field = "body_text"
    pattern = "^(thanks|ok)$"
    action = "drop"
""", name="mail")


def test_on_mail_matches_mail_of_its_types_only(clock: Clock) -> None:
    p = pipeline(clock, MAIL)
    assert p.matching(mail_envelope(PEER, "text", "hi")) == (MAIL,)
    assert p.matching(mail_envelope(PEER, "offer", "hi")) == ()
    assert p.matching(event_envelope("peer.added", {"node_id": PEER})) == ()


def test_on_event_matches_names_and_globs_and_match_patterns(clock: Clock) -> None:
    exact = recipe('[trigger]\ntype = "on_event"\nevents = ["peer.removed"]\n', name="exact")
    glob = recipe('[trigger]\ntype = "on_event"\nevent_pattern = "task.*"\n'
                  'match_field = "outcome"\nmatch_pattern = "^failed$"\n', name="glob")
    on_mail = recipe('[trigger]\ntype = "on_event"\nevents = ["mail.received"]\n', name="m")
    p = pipeline(clock, exact, glob, on_mail)
    assert p.matching(event_envelope("peer.removed", {"node_id": PEER})) == (exact,)
    failed = event_envelope("task.consumed", {"provider": PEER, "outcome": "failed"})
    assert p.matching(failed) == (glob,)
    assert failed.sender == PEER
    ok = event_envelope("task.consumed", {"provider": PEER, "outcome": "completed"})
    assert p.matching(ok) == ()
    mail = event_envelope("mail.received", {"sender": PEER, "type": "x", "body": {"a": 1},
                                            "id": "00"})
    assert p.matching(mail) == (on_mail,)
    assert mail.fields["body_text"] == '{"a":1}' and mail.fields["msg_type"] == "x"


def test_disabled_recipes_never_match(clock: Clock) -> None:
    off = recipe('mode = "disabled"\n[trigger]\ntype = "on_mail"\n', name="off")
    tick = recipe('mode = "disabled"\n[trigger]\ntype = "on_tick"\n', name="t")
    p = pipeline(clock, off, tick)
    assert p.matching(mail_envelope(PEER, "text", "hi")) == ()
    p.due_ticks()
    clock.advance(3600)
    assert p.due_ticks() == []


def test_hotwire_rules_in_order_then_the_default(clock: Clock) -> None:
    p = pipeline(clock, MAIL)
    d = p.decide(MAIL, mail_envelope(PEER, "text", "The site is DOWN"))
    assert (d.stage, d.action) == ("hotwire", "wake")
    assert d.path[-1] == "hotwire rule 0: body_text =~ /urgent|down/"
    assert p.decide(MAIL, mail_envelope(PEER, "text", "thanks")).action == "drop"
    d = p.decide(MAIL, mail_envelope(PEER, "text", "lunch?"))
    assert (d.action, d.reason) == ("log", "no rule matched")
    assert p.decide(MAIL, mail_envelope(PEER, "text", "")).action == "log"


def test_a_rule_on_a_missing_field_sees_an_empty_string(clock: Clock) -> None:
    r = recipe('[trigger]\ntype = "on_event"\nevents = ["x"]\n[evaluate]\n'
               'default_action = "drop"\n[[evaluate.rules]]\nfield = "reason"\npattern = ".+"\n'
               'action = "wake"\n')
    p = pipeline(clock, r)
    assert p.decide(r, event_envelope("x", {})).action == "drop"
    assert p.decide(r, event_envelope("x", {"reason": "replay"})).action == "wake"


def test_trust_tiers_and_the_bypass(clock: Clock) -> None:
    r = recipe("""
        [trigger]
        type = "on_mail"
        [filter]
        trust_bypass = true
        bypass_action = "wake"
        [evaluate]
        default_action = "compile"
    """)
    p = pipeline(clock, r)
    team = p.decide(r, mail_envelope(TEAM, "text", "hi"))
    assert (team.tier, team.stage, team.action) == ("team", "bypass", "wake")
    known = p.decide(r, mail_envelope(KNOWN, "text", "hi"))
    assert (known.tier, known.stage, known.action) == ("known", "hotwire", "compile")
    stranger = p.decide(r, mail_envelope(PEER, "text", "hi"))
    assert (stranger.tier, stranger.action) == ("unknown", "compile")
    both = recipe('[trigger]\ntype = "on_mail"\n[filter]\ntrust_bypass = true\n'
                  'bypass_tiers = ["team", "known"]\nbypass_action = "reply"\n', name="b")
    assert pipeline(clock, both).decide(both, mail_envelope(KNOWN, "text", "x")).action == \
        "reply"


def test_the_rate_limit_counts_per_sender_in_a_sliding_window(clock: Clock) -> None:
    r = recipe("""
        [trigger]
        type = "on_mail"
        [filter]
        rate_limit_window = 60
        rate_limit_max = 3
        rate_limit_action = "compile"
        [evaluate]
        default_action = "wake"
    """)
    p = pipeline(clock, r)
    actions = []
    for _ in range(5):
        actions.append(p.decide(r, mail_envelope(PEER, "text", "x")).action)
        clock.advance(10)
    assert actions == ["wake", "wake", "wake", "compile", "compile"]
    d = p.decide(r, mail_envelope(PEER, "text", "x"))
    assert d.stage == "rate_limit" and d.reason == "rate limited (5/3 in 60 s)"
    # another sender has its own window
    assert p.decide(r, mail_envelope(KNOWN, "text", "x")).action == "wake"
    clock.advance(61)  # everything has left the window
    assert p.decide(r, mail_envelope(PEER, "text", "x")).action == "wake"


def test_the_cooldown_skips_until_it_expires_and_a_drop_does_not_arm_it(clock: Clock) -> None:
    r = recipe("""
        [trigger]
        type = "on_event"
        events = ["alarm"]
        [filter]
        cooldown_key = "alarm:{{from_node}}"
        cooldown_seconds = 300
        [evaluate]
        default_action = "drop"
        [[evaluate.rules]]
        field = "level"
        pattern = "high"
        action = "wake"
    """)
    p = pipeline(clock, r)

    def alarm(level: str, peer: str = PEER) -> str:
        d = p.decide(r, event_envelope("alarm", {"peer": peer, "level": level}))
        return d.stage if d.action is None else d.action

    assert alarm("low") == "drop"
    assert alarm("high") == "wake"  # the drop did not start the cooldown
    assert alarm("high") == "skip"
    assert alarm("high", KNOWN) == "wake"  # the key is per peer
    clock.advance(299)
    assert alarm("high") == "skip"
    clock.advance(1)
    assert alarm("high") == "wake"
    d = p.decide(r, event_envelope("alarm", {"peer": PEER, "level": "high"}))
    assert d.path[-1].startswith("filter: cooldown 'alarm:abab")


def test_cached_verdicts_are_reused_within_the_ttl(clock: Clock) -> None:
    r = recipe("""
        [trigger]
        type = "on_mail"
        [filter]
        cache_ttl = 120
        [evaluate]
        type = "llm"
        prompt = "triage"
        fallback_action = "compile"
        [actions.wake]
    """)
    p = pipeline(clock, r)
    first = p.decide(r, mail_envelope(PEER, "text", "x"))
    assert (first.stage, first.action) == ("llm", None)
    p.remember(r, first.envelope, "wake")
    clock.advance(119)
    cached = p.decide(r, mail_envelope(PEER, "text", "y"))
    assert (cached.stage, cached.action) == ("cache", "wake")
    assert p.decide(r, mail_envelope(KNOWN, "text", "y")).stage == "llm"
    clock.advance(1)
    assert p.decide(r, mail_envelope(PEER, "text", "z")).stage == "llm"


def test_ticks_fire_once_per_interval(clock: Clock) -> None:
    fast = recipe('[trigger]\ntype = "on_tick"\ninterval = 10\n', name="fast")
    default = recipe('[trigger]\ntype = "on_tick"\n', name="default")
    p = pipeline(clock, fast, default)
    assert p.due_ticks() == []  # the first firing is one interval after loading
    clock.advance(10)
    assert [r.name for r in p.due_ticks()] == ["fast"]
    assert p.due_ticks() == []
    clock.advance(50)
    assert sorted(r.name for r in p.due_ticks()) == ["default", "fast"]


def test_tick_envelopes_carry_node_state(clock: Clock) -> None:
    r = recipe('[trigger]\ntype = "on_tick"\n[evaluate]\ndefault_action = "drop"\n'
               '[[evaluate.rules]]\nfield = "peer_count"\npattern = "^[0-1]$"\n'
               'action = "wake"\n')
    p = pipeline(clock, r)
    assert p.decide(r, tick_envelope({"peer_count": "0"})).action == "wake"
    assert p.decide(r, tick_envelope({"peer_count": "12"})).action == "drop"


def test_state_survives_a_reload_of_the_same_recipe_and_prune_forgets(clock: Clock) -> None:
    r = recipe('[trigger]\ntype = "on_mail"\n[filter]\nrate_limit_window = 60\n'
               'rate_limit_max = 1\n[evaluate]\ndefault_action = "wake"\n')
    p = pipeline(clock, r)
    assert p.decide(r, mail_envelope(PEER, "text", "x")).action == "wake"
    p.replace({"r": r})
    assert p.decide(r, mail_envelope(PEER, "text", "x")).stage == "rate_limit"
    clock.advance(61)
    p.prune()
    assert p.state("r").arrivals == {}


def test_envelope_summaries_are_short() -> None:
    env = mail_envelope(PEER, "text", "x" * 500)
    assert len(env.summary()) == 160 and env.summary().startswith("text mail from abababab")
    ev = event_envelope("peer.added", {"node_id": PEER, "host": "127.0.0.1", "port": 9000})
    assert "host=127.0.0.1 port=9000" in ev.summary()
