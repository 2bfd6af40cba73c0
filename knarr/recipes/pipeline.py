"""The decision core: which recipes an event fires, and what their filter and hotwire
rules decide. Pure code with an injected clock: no I/O, no sleeps, no model calls.

An :class:`Envelope` carries one trigger's fields as strings (the original Thrall's
names: ``from_node``, ``msg_type``, ``body_text``, ``event_name``, plus the event's own
data and any gathered node state). :meth:`Pipeline.decide` runs the filter (trust tier,
bypass, cooldown, per-sender rate limit, verdict cache) and, for hotwire recipes, the
rules; an LLM recipe comes back undecided for the cascade to finish.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from knarr.config import ThrallTrustTiers
from knarr.recipes.recipe import Recipe, render

MAIL_EVENT: Final = "mail.received"
TICK: Final = "tick"

_SENDER_KEYS: Final[Mapping[str, str]] = {
    "mail.received": "sender",
    "task.provided": "requester",
    "task.consumed": "provider",
    "peer.added": "node_id",
    "peer.removed": "node_id",
}


@dataclass(slots=True)
class Envelope:
    """What one trigger saw, as string fields that rules and templates read."""

    source: str
    """``mail.received``, another event's name, or ``tick``."""
    fields: dict[str, str]
    sender: str = ""
    time: float = 0.0

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)

    def lookup(self, key: str) -> str | None:
        return self.fields.get(key)

    def summary(self, limit: int = 160) -> str:
        """A one-line description of the inputs, for the firing record."""
        f = self.fields
        if self.source == MAIL_EVENT:
            text = f"{f.get('msg_type', '')} mail from {self.sender[:12]}: " \
                   f"{json.dumps(f.get('body_text', ''))}"
        else:
            skip = {"event_name", "from_node", "_ts"}
            parts = [f"{k}={v}" for k, v in f.items() if k not in skip and len(v) < 80]
            text = f"{self.source} " + " ".join(parts)
        return text if len(text) <= limit else text[: limit - 1] + "…"


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(round(value, 6))
    if value is None:
        return ""
    return json.dumps(value, default=str, separators=(",", ":"))


def mail_envelope(sender: str, msg_type: str, body: Any, mail_id: str = "",
                  time: float = 0.0) -> Envelope:
    fields = {
        "event_name": MAIL_EVENT, "from_node": sender, "msg_type": msg_type,
        "body_text": as_text(body), "mail_id": mail_id, "_ts": str(int(time)),
    }
    return Envelope(MAIL_EVENT, fields, sender, time)


def event_envelope(name: str, data: Mapping[str, Any], time: float = 0.0) -> Envelope:
    if name == MAIL_EVENT:
        return mail_envelope(str(data.get("sender", "")), str(data.get("type", "")),
                             data.get("body", ""), str(data.get("id", "")), time)
    fields = {str(k): as_text(v) for k, v in data.items()}
    key = _SENDER_KEYS.get(name)
    sender = fields.get(key, "") if key else fields.get("peer", fields.get("node_id", ""))
    fields["event_name"] = name
    fields["from_node"] = sender
    fields["_ts"] = str(int(time))
    return Envelope(name, fields, sender, time)


def tick_envelope(state: Mapping[str, str], time: float = 0.0) -> Envelope:
    fields = dict(state)
    fields.update(event_name=TICK, from_node="", _ts=str(int(time)))
    return Envelope(TICK, fields, "", time)


@dataclass(slots=True)
class Decision:
    """Where an envelope went in one recipe. ``action`` is ``None`` when the filter
    skipped it, or when an LLM must still decide (``stage == "llm"``)."""

    recipe: Recipe
    envelope: Envelope
    tier: str
    stage: str
    """``skip``, ``bypass``, ``rate_limit``, ``cache``, ``hotwire`` or ``llm``."""
    action: str | None
    reason: str
    path: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RecipeState:
    """What a recipe remembers between firings (kept across reloads of the recipe)."""

    arrivals: dict[str, deque[float]] = field(default_factory=dict)
    cooldowns: dict[str, float] = field(default_factory=dict)
    cache: dict[str, tuple[str, float]] = field(default_factory=dict)
    last_tick: float | None = None
    """When the recipe last ran on a tick (or was loaded)."""


class Pipeline:
    """Matches envelopes to recipes and runs their filters and hotwire rules."""

    def __init__(
        self,
        recipes: Mapping[str, Recipe],
        tiers: ThrallTrustTiers,
        clock: Callable[[], float],
        tick_interval: float = 60.0,
    ) -> None:
        self.tiers = tiers
        self.clock = clock
        self.tick_interval = tick_interval
        self._recipes: dict[str, Recipe] = {}
        self._state: dict[str, RecipeState] = {}
        self._index: dict[str, tuple[Recipe, ...]] = {}
        self.replace(recipes)

    @property
    def recipes(self) -> Mapping[str, Recipe]:
        return self._recipes

    def replace(self, recipes: Mapping[str, Recipe]) -> None:
        """Swap in a new recipe set; recipes that keep their name keep their state."""
        self._recipes = dict(recipes)
        now = self.clock()
        self._state = {
            n: self._state.get(n) or RecipeState(last_tick=now) for n in self._recipes
        }
        self._index = {}

    def state(self, name: str) -> RecipeState:
        return self._state[name]

    # ------------------------------------------------------------------ matching

    def matching(self, env: Envelope) -> tuple[Recipe, ...]:
        candidates = self._index.get(env.source)
        if candidates is None:
            candidates = self._index[env.source] = tuple(
                r for r in self._recipes.values() if r.mode != "disabled" and (
                    (r.trigger.type == "on_mail" and env.source == MAIL_EVENT)
                    or (r.trigger.type == "on_event" and r.trigger.wants_event(env.source))
                )
            )
        out = []
        for recipe in candidates:
            trigger = recipe.trigger
            if trigger.msg_types and recipe.trigger.type == "on_mail" \
                    and env.fields.get("msg_type") not in trigger.msg_types:
                continue
            if trigger.match_pattern is not None and not trigger.match_pattern.search(
                env.fields.get(trigger.match_field, "")
            ):
                continue
            out.append(recipe)
        return tuple(out)

    def due_ticks(self) -> list[Recipe]:
        """``on_tick`` recipes whose interval has passed (the first one interval after
        they were loaded); marks them as run."""
        now = self.clock()
        due = []
        for recipe in self._recipes.values():
            if recipe.trigger.type != "on_tick" or recipe.mode == "disabled":
                continue
            state = self._state[recipe.name]
            interval = recipe.trigger.interval or self.tick_interval
            if state.last_tick is None or now - state.last_tick >= interval:
                state.last_tick = now
                due.append(recipe)
        return due

    # ------------------------------------------------------------------ deciding

    def decide(
        self, recipe: Recipe, env: Envelope, gather: Callable[[Envelope], None] | None = None
    ) -> Decision:
        """Filter, gather (``gather`` adds fields to ``env`` unless the filter skipped it),
        then (hotwire) evaluate. Updates rate-limit and cooldown state."""
        now = self.clock()
        filt = recipe.filter
        state = self._state[recipe.name]
        tier = self.tiers.tier_of(env.sender) if env.sender else "unknown"
        path = [f"trigger {recipe.trigger.type} ({env.source})"]
        if filt.trust_bypass and tier in filt.bypass_tiers:
            path.append(f"filter: {tier} tier bypass")
            return self._decided(Decision(recipe, env, tier, "bypass", filt.bypass_action,
                                          f"trust tier {tier}", path), gather)
        if filt.cooldown_seconds > 0:
            key = _cooldown_key(recipe, env)
            last = state.cooldowns.get(key)
            if last is not None and now - last < filt.cooldown_seconds:
                left = filt.cooldown_seconds - (now - last)
                path.append(f"filter: cooldown {key!r} ({left:.0f} s left)")
                return Decision(recipe, env, tier, "skip", None, f"cooldown {left:.0f} s", path)
        if filt.rate_limit_max > 0:
            sender = env.sender or "*"
            arrivals = state.arrivals.get(sender)
            if arrivals is None:
                arrivals = state.arrivals[sender] = deque()
            horizon = now - filt.rate_limit_window
            while arrivals and arrivals[0] <= horizon:
                arrivals.popleft()
            count = len(arrivals)
            arrivals.append(now)
            if count >= filt.rate_limit_max:
                why = f"rate limited ({count}/{filt.rate_limit_max} in " \
                      f"{filt.rate_limit_window:g} s)"
                path.append(f"filter: {why}")
                return self._decided(Decision(recipe, env, tier, "rate_limit",
                                              filt.rate_limit_action, why, path), gather)
        if filt.cache_ttl > 0 and env.sender:
            cached = state.cache.get(env.sender)
            if cached is not None and now - cached[1] < filt.cache_ttl:
                path.append(f"filter: cached verdict from {now - cached[1]:.0f} s ago")
                return self._decided(Decision(recipe, env, tier, "cache", cached[0],
                                              "cached verdict", path), gather)
        path.append(f"filter: pass (tier {tier})")
        if gather is not None:
            gather(env)
        if not recipe.hotwire:
            return Decision(recipe, env, tier, "llm", None, "", path)
        evaluate = recipe.evaluate
        fields = env.fields
        for i, rule in enumerate(evaluate.rules):
            if rule.pattern.search(fields.get(rule.field, "")):
                why = f"rule {i}: {rule.field} =~ /{rule.pattern.pattern}/"
                path.append(f"hotwire {why}")
                return self._decided(Decision(recipe, env, tier, "hotwire", rule.action, why,
                                              path))
        path.append("hotwire: no rule matched, default")
        return self._decided(Decision(recipe, env, tier, "hotwire", evaluate.default_action,
                                      "no rule matched", path))

    def _decided(
        self, decision: Decision, gather: Callable[[Envelope], None] | None = None
    ) -> Decision:
        if gather is not None:
            gather(decision.envelope)
        if decision.action is not None:
            self.arm_cooldown(decision.recipe, decision.envelope, decision.action)
        return decision

    def arm_cooldown(self, recipe: Recipe, env: Envelope, action: str) -> None:
        """Start the recipe's cooldown, unless the verdict was to drop (a quiet check
        must not silence the next real alert)."""
        if recipe.filter.cooldown_seconds > 0 and recipe.actions[action].kind != "drop":
            self._state[recipe.name].cooldowns[_cooldown_key(recipe, env)] = self.clock()

    def remember(self, recipe: Recipe, env: Envelope, action: str) -> None:
        """Cache an LLM verdict for this sender (``filter.cache_ttl``)."""
        if recipe.filter.cache_ttl > 0 and env.sender:
            self._state[recipe.name].cache[env.sender] = (action, self.clock())

    def prune(self) -> None:
        """Forget rate-limit windows, cooldowns and cached verdicts that have expired."""
        now = self.clock()
        for name, state in self._state.items():
            filt = self._recipes[name].filter
            state.arrivals = {
                s: a for s, a in state.arrivals.items()
                if a and a[-1] > now - filt.rate_limit_window
            }
            state.cooldowns = {
                k: t for k, t in state.cooldowns.items() if now - t < filt.cooldown_seconds
            }
            state.cache = {s: v for s, v in state.cache.items() if now - v[1] < filt.cache_ttl}


def _cooldown_key(recipe: Recipe, env: Envelope) -> str:
    key = recipe.filter.cooldown_key
    return render(key, env.lookup) if key else recipe.name
