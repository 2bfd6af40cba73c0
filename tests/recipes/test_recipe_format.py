"""The recipe format: what loads, what is refused (with the file and key named), and that
the original Thrall's recipes carry over."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from knarr.recipes.engine import BUNDLED
from knarr.recipes.prompts import load_prompts
from knarr.recipes.recipe import (
    NODE_FIELDS,
    RecipeError,
    load_recipe,
    load_recipes,
)
from tests.recipes.conftest import recipe, write

MINIMAL = """
[trigger]
type = "on_mail"
"""


def refused(text: str, prompts: tuple[str, ...] = ("triage",)) -> str:
    with pytest.raises(RecipeError) as info:
        recipe(text, prompts=prompts)
    return str(info.value)


def test_a_minimal_recipe_logs_every_mail() -> None:
    r = recipe(MINIMAL)
    assert r.mode == "automated" and r.trigger.type == "on_mail" and r.trigger.msg_types == ()
    assert r.evaluate.type == "hotwire" and r.evaluate.default_action == "log"
    assert r.actions["log"].kind == "log"


@pytest.mark.parametrize(("text", "message"), [
    ("colour = 1\n" + MINIMAL, 'r.toml: colour: unknown key; expected one of "mode"'),
    (MINIMAL + '[filter]\ncooldown_secs = 5\n',
     'r.toml: filter.cooldown_secs: unknown key; did you mean "cooldown_seconds"?'),
    (MINIMAL + '[evaluate]\ntype = "hotwire"\n[[evaluate.rules]]\nfield = "body_text"\n'
     'pattern = "(unclosed"\naction = "wake"\n',
     'r.toml: evaluate.rules[0].pattern: bad regex "(unclosed": missing ), unterminated'),
    (MINIMAL + '[evaluate]\ndefault_action = "explode"\n',
     'r.toml: evaluate.default_action: unknown action "explode": expected one of "drop"'),
    (MINIMAL + '[evaluate]\n[[evaluate.rules]]\nfield = "x"\npattern = "y"\naction = "wakey"\n',
     'r.toml: evaluate.rules[0].action: unknown action "wakey"'),
    (MINIMAL + '[actions.monitor]\ninput = {}\n',
     'r.toml: actions.monitor: unknown action "monitor": set type = one of'),
    (MINIMAL + '[evaluate]\ndefault_action = "act"\n',
     "r.toml: actions.act.skill: missing; act calls a skill"),
    (MINIMAL + '[actions.compile]\nsummon_threshold = "ten"\n',
     "r.toml: actions.compile.summon_threshold: expected an integer, got a string"),
    ('[trigger]\ntype = "on_email"\n',
     'r.toml: trigger.type: expected one of "on_mail", "on_event", "on_tick", got "on_email" '
     '(did you mean "on_mail"?)'),
    ('mode = "auto"\n' + MINIMAL, 'r.toml: mode: expected one of "automated"'),
    ("[filter]\n", "r.toml: trigger: missing; every recipe needs [trigger]"),
    ('[trigger]\ntype = "on_event"\n', "r.toml: trigger.events: on_event needs events"),
    ('[trigger]\ntype = "on_event"\nevents = ["recipe"]\n',
     'r.toml: trigger.events: "recipe" is Thrall\'s own output'),
    ('[trigger]\ntype = "on_tick"\nmsg_types = ["text"]\n',
     "r.toml: trigger.msg_types: unknown key"),
    ('[trigger]\ntype = "on_tick"\ninterval = 0\n',
     "r.toml: trigger.interval: expected a number > 0, got 0"),
    (MINIMAL + '[filter]\nrate_limit_max = 3\n',
     "r.toml: filter.rate_limit_max: rate_limit_window and rate_limit_max go together"),
    (MINIMAL + '[gather]\nnode = ["peer_cont"]\n',
     'r.toml: gather.node[0]: unknown node field "peer_cont"; did you mean "peer_count"?'),
    (MINIMAL + '[evaluate]\ntype = "llm"\nprompt = "nope"\n',
     'r.toml: evaluate.prompt: no prompt named "nope"'),
    (MINIMAL + '[evaluate]\ntype = "llm"\nprompt = "triage"\nfallback_action = "settle"\n',
     "r.toml: evaluate.fallback_action: settle is allowed on the hotwire path only"),
    (MINIMAL + '[evaluate]\ntype = "llm"\nprompt = "triage"\nrules = []\n',
     "r.toml: evaluate.rules: unknown key"),
])
def test_mistakes_are_refused_naming_the_file_and_key(text: str, message: str) -> None:
    assert message in refused(text)


def test_a_broken_file_is_reported_and_the_others_still_load(tmp_path: Path) -> None:
    write(tmp_path, "good.toml", MINIMAL)
    write(tmp_path, "bad-regex.toml", MINIMAL + '[[evaluate.rules]]\nfield = "a"\n'
          'pattern = "[z-a]"\naction = "log"\n')
    write(tmp_path, "bad-toml.toml", "[trigger\n")
    write(tmp_path, "notes.txt", "not a recipe")
    result = load_recipes([tmp_path])
    assert sorted(result.recipes) == ["good"]
    assert sorted(result.errors) == ["bad-regex", "bad-toml"]
    assert re.match(rf"{re.escape(str(tmp_path))}/bad-regex.toml: evaluate.rules\[0\].pattern: "
                    r"bad regex \"\[z-a\]\": bad character range", result.errors["bad-regex"])
    assert "bad-toml.toml: invalid TOML" in result.errors["bad-toml"]


def test_a_later_folder_overrides_a_recipe_of_the_same_name(tmp_path: Path) -> None:
    write(tmp_path / "a", "x.toml", MINIMAL)
    write(tmp_path / "b", "x.toml", 'mode = "disabled"\n' + MINIMAL)
    result = load_recipes([tmp_path / "a", tmp_path / "b"])
    assert result.recipes["x"].mode == "disabled"


def test_each_trigger_type_parses() -> None:
    mail = recipe('[trigger]\ntype = "on_mail"\nmsg_types = ["text", "offer"]\n'
                  'match_field = "body_text"\nmatch_pattern = "invoice"\n')
    assert mail.trigger.msg_types == ("text", "offer")
    assert mail.trigger.match_pattern is not None
    event = recipe('[trigger]\ntype = "on_event"\nevents = ["peer.added", "task.*"]\n')
    assert event.trigger.wants_event("peer.added") and event.trigger.wants_event("task.consumed")
    assert not event.trigger.wants_event("peer.removed")
    tick = recipe('[trigger]\ntype = "on_tick"\ninterval = 30\n')
    assert tick.trigger.interval == 30.0


def test_the_original_thrall_format_carries_over() -> None:
    """Keys from knarr-thrall's recipes: event_pattern, trust_bypass, cooldown_key with
    templates, the catalog gather list, custom action names with a skill."""
    r = recipe("""
        mode = "automated"
        gather = ["peer_count", "net_position"]

        [trigger]
        type = "on_event"
        event_pattern = "task.*"

        [filter]
        trust_bypass = true
        bypass_action = "wake"
        cooldown_key = "task-fail:{{from_node}}"
        cooldown_seconds = 60
        rate_limit_window = 60
        rate_limit_max = 5
        rate_limit_action = "compile"
        cache_ttl = 120

        [evaluate]
        type = "hotwire"
        default_action = "monitor"

        [[evaluate.rules]]
        field = "outcome"
        pattern = "failed"
        action = "compile"

        [actions.monitor]
        skill = "cluster-monitor"
        input = { peer = "{{from_node}}" }
        error_buffer = "monitor-errors"

        [actions.compile]
        buffer = "task-errors"
        summon_threshold = 5
        summon_keywords = ["timeout"]
    """)
    assert r.trigger.events == ("task.*",)
    assert r.gather.node == ("peer_count", "net_position")
    assert r.actions["monitor"].kind == "act" and r.actions["monitor"].opt("skill") == \
        "cluster-monitor"
    assert r.actions["wake"].kind == "wake"  # referenced by bypass_action, built in
    assert r.filter.cooldown_key == "task-fail:{{from_node}}"


def test_llm_recipes_default_to_their_actions_without_settle() -> None:
    r = recipe(MINIMAL + """
        [evaluate]
        type = "llm"
        prompt = "triage"
        fallback_action = "compile"
        [actions.drop]
        [actions.wake]
        [actions.settle]
    """)
    assert r.evaluate.actions == ("drop", "wake", "compile")
    assert r.evaluate.cascade is True


def test_gather_table_form() -> None:
    r = recipe(MINIMAL + '[gather]\nnode = true\nmail = 3\ntext = "be brief"\n')
    assert r.gather.node == tuple(NODE_FIELDS) and r.gather.mail == 3
    assert r.gather.text == "be brief"


def test_every_bundled_recipe_and_prompt_loads() -> None:
    prompts, prompt_errors = load_prompts([BUNDLED / "prompts"])
    assert prompt_errors == {} and {"triage", "triage-l1"} <= set(prompts)
    result = load_recipes([BUNDLED], prompts=prompts)
    assert result.errors == {}
    assert len(result.recipes) >= 10
    for name in ("mail-triage", "mail-digest", "health-check", "isolation-alert",
                 "credit-warning", "task-failures", "settlement-proposal",
                 "settlement-review", "security-alert", "queue-backpressure"):
        assert name in result.recipes
    assert all(r.description for r in result.recipes.values())


def test_a_prompt_file_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "p.toml", 'content = "x"\ntemperature = 1\n')
    write(tmp_path, "q.toml", 'content = "{{body_text}}"\n')
    prompts, errors = load_prompts([tmp_path])
    assert sorted(prompts) == ["q"]
    assert "p.toml: temperature: unknown key" in errors["p"]


def test_reading_a_missing_file_is_a_recipe_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read the file"):
        load_recipe(tmp_path / "gone.toml")
