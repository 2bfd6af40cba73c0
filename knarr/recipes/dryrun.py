"""``knarr thrall test``: the path an event would take through one recipe, without a node,
a model or any side effect.

The event is JSON: for ``on_mail`` ``{"sender", "type", "body"}``; for ``on_event``
``{"type": NAME, ...data}`` (or ``"event": NAME``); for ``on_tick`` the node-state
fields to assume (missing ones count as 0). Gathered fields can be given the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from knarr.config import ThrallConfig
from knarr.recipes.actions import render_value
from knarr.recipes.pipeline import (
    Envelope,
    Pipeline,
    as_text,
    event_envelope,
    mail_envelope,
    tick_envelope,
)
from knarr.recipes.prompts import Prompt
from knarr.recipes.recipe import NODE_FIELDS, Action, Recipe, render


@dataclass
class DryRun:
    recipe: str
    steps: list[tuple[str, str]] = field(default_factory=list)
    verdict: str | None = None
    action: str | None = None

    def add(self, stage: str, text: str) -> None:
        self.steps.append((stage, text))

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "verdict": self.verdict, "action": self.action,
                "steps": [{"stage": s, "text": t} for s, t in self.steps]}

    def lines(self) -> list[str]:
        return [f"{stage:<9} {text}" for stage, text in self.steps]


def envelope_for(recipe: Recipe, event: Mapping[str, Any]) -> Envelope:
    trigger = recipe.trigger
    if trigger.type == "on_mail":
        return mail_envelope(
            str(event.get("sender", event.get("from_node", ""))),
            str(event.get("type", event.get("msg_type", trigger.msg_types[0]
                                             if trigger.msg_types else "text"))),
            event.get("body", event.get("body_text", "")),
            str(event.get("id", "")),
        )
    if trigger.type == "on_event":
        key = "type" if "type" in event else "event" if "event" in event else None
        name = event.get(key) if key else None
        if not isinstance(name, str):
            name = next((e for e in trigger.events if not any(c in e for c in "*?[")),
                        trigger.events[0])
        return event_envelope(name, {k: v for k, v in event.items() if k != key})
    state = {name: "0" for name in NODE_FIELDS}
    state.update({str(k): as_text(v) for k, v in event.items()})
    return tick_envelope(state)


def dry_run(
    recipe: Recipe,
    event: Mapping[str, Any],
    *,
    config: ThrallConfig | None = None,
    prompts: Mapping[str, Prompt] | None = None,
) -> DryRun:
    config = config or ThrallConfig()
    run = DryRun(recipe.name)
    run.add("recipe", f"{recipe.name} ({recipe.source}), mode {recipe.mode}")
    env = envelope_for(recipe, event)
    pipeline = Pipeline({recipe.name: recipe}, config.trust_tiers, lambda: 0.0,
                        config.tick_interval)
    if recipe.mode == "disabled":
        run.add("trigger", "the recipe is disabled: nothing would happen")
        return run
    if recipe.trigger.type != "on_tick" and not pipeline.matching(env):
        run.add("trigger", f"{recipe.trigger.type} does not fire for {env.source!r} "
                f"({_trigger_text(recipe)})")
        return run
    run.add("trigger", f"{recipe.trigger.type} fires for {env.source!r} ({_trigger_text(recipe)})")
    gathered = _gather(recipe, env, event)
    if gathered:
        run.add("gather", gathered)
    decision = pipeline.decide(recipe, env)
    for step in decision.path[1:]:
        stage = "evaluate" if step.startswith("hotwire") else "filter"
        run.add(stage, step.removeprefix("filter: "))
    action_name = decision.action
    if decision.stage == "skip":
        return run
    if action_name is None:
        ev = recipe.evaluate
        backend = config.backend
        cascade = ""
        if ev.cascade and config.cascade.enabled:
            cascade = (f"L1 {config.cascade.l1_backend} with prompt "
                       f"{ev.l1_prompt or config.cascade.l1_prompt!r} (drop / escalate), then ")
        prompt = (prompts or {}).get(ev.prompt)
        rendered = ""
        if prompt is not None:
            text = render(prompt.content, lambda n: "unknown" if n == "filter.tier"
                          else env.fields.get(n))
            rendered = f"; the prompt renders to {len(text)} characters"
        run.add("evaluate", f"llm: {cascade}L2 {backend} with prompt {ev.prompt!r}, answer "
                f"constrained to {', '.join(ev.actions)}{rendered}")
        if backend == "none":
            run.add("evaluate", f"no backend is configured: fallback {ev.fallback_action!r}")
        else:
            run.add("evaluate", f"a dry run asks no model; shown: the fallback "
                    f"{ev.fallback_action!r} (taken on failure, timeout or a full queue)")
        action_name = ev.fallback_action
    run.verdict = action_name
    action = recipe.action(action_name)
    run.action = action.kind
    run.add("action", describe(action, env))
    if recipe.mode == "manual":
        run.add("action", "manual mode: it would only be recorded, not done")
    return run


def _trigger_text(recipe: Recipe) -> str:
    t = recipe.trigger
    if t.type == "on_mail":
        text = "msg_types " + (", ".join(t.msg_types) if t.msg_types else "any")
    elif t.type == "on_event":
        text = "events " + ", ".join(t.events)
    else:
        text = f"every {t.interval:g} s" if t.interval else "every tick_interval"
    if t.match_pattern is not None:
        text += f", {t.match_field} =~ /{t.match_pattern.pattern}/"
    return text


def _gather(recipe: Recipe, env: Envelope, event: Mapping[str, Any]) -> str:
    g = recipe.gather
    parts = []
    if g.node:
        missing = [n for n in g.node if n not in event and n not in env.fields]
        for name in g.node:
            env.fields.setdefault(name, as_text(event.get(name, 0)))
        shown = "node " + ", ".join(f"{n}={env.fields[n]}" for n in g.node)
        parts.append(shown + (f" (assumed 0: {', '.join(missing)})" if missing else ""))
    if g.mail:
        env.fields.setdefault("recent_mail", str(event.get("recent_mail", "")))
        parts.append(f"last {g.mail} mails from the sender")
    if g.text:
        env.fields.setdefault("static_text", g.text)
        parts.append(f"static text ({len(g.text)} characters)")
    return "; ".join(parts)


def describe(action: Action, env: Envelope) -> str:
    """What ``action`` would do, in words."""
    o = action.options
    kind = action.kind
    head = f"{action.name} ({kind})" if action.name != kind else kind
    if kind == "drop":
        return f"{head}: nothing happens" + ("" if action.record else " (not recorded)")
    if kind == "log":
        return f"{head}: a log line and a firing record"
    if kind == "compile":
        flush = []
        if o["summon_threshold"]:
            flush.append(f"at {o['summon_threshold']} items")
        if o["summon_keywords"]:
            flush.append("on " + ", ".join(o["summon_keywords"]))
        if o["flush_seconds"]:
            flush.append(f"after {o['flush_seconds']:g} s")
        text = (f"{head}: add to digest {o['buffer'] or 'named after the recipe'!r}"
                + (f", flushed {' or '.join(flush)}" if flush else ""))
        hit = o["keyword_re"].search(env.get("body_text") or env.summary()) \
            if o["keyword_re"] is not None else None
        if hit is not None:
            text += f"; {hit.group(0)!r} is a keyword: flushed now, the operator summoned"
        return text
    if kind in ("wake", "summon"):
        message = render(o.get("message", ""), env.lookup) or env.summary()
        return f"{head}: notify the operator: {message}"
    if kind == "reply":
        return (f"{head}: mail {render(o['to'], env.lookup)[:16]}… a {o['msg_type']!r}: "
                f"{json.dumps(render(o['template'], env.lookup))}")
    if kind == "act":
        where = "locally" if o["local"] else "on the network"
        data = json.dumps(render_value(o["input"], env.lookup))
        return f"{head}: call skill {o['skill']!r} {where} with {data[:120]}"
    target = render(o["peer"], env.lookup) or f"the {o['max_peers']} largest balances"
    return (f"{head}: propose netting settlements with {target} (at least "
            f"{o['threshold']:g} credits), signed by the delegate key within its daily ceiling")
