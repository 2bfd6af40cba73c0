"""The recipe format: TOML files → validated, frozen :class:`Recipe` objects.

A recipe is ``trigger → filter → gather → evaluate → action``. Loading is strict: an
unknown key, a bad regex, an unknown action or a missing prompt rejects the file with one
line naming the file and the key (``recipes/x.toml: evaluate.rules[0].pattern: ...``);
the other files still load. The format is the original Thrall's, so its recipes carry
over: top-level ``mode``; ``[trigger] type`` (``on_mail`` with ``msg_types``,
``on_event`` with ``events`` or ``event_pattern``, ``on_tick`` with ``interval``);
``[filter]``; ``[gather]`` (or the catalog list ``gather = [...]``); ``[evaluate]`` with
``[[evaluate.rules]]``; ``[actions.<name>]``.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, NoReturn

from knarr.errors import ConfigError

MODES: Final = ("automated", "manual", "disabled")
TRIGGERS: Final = ("on_mail", "on_event", "on_tick")
EVALUATIONS: Final = ("hotwire", "llm")
ACTION_KINDS: Final = ("drop", "log", "compile", "wake", "summon", "reply", "act", "settle")
SYNC_KINDS: Final = frozenset({"drop", "log", "compile", "wake", "summon", "reply"})
"""Actions that finish without waiting on the network or a model."""

SELF_EVENTS: Final = frozenset({"recipe", "thrall.wake", "thrall.summon", "thrall.reload"})
"""Events Thrall emits about itself; a recipe triggered by them would feed on its own
output, so no recipe may name them."""

NODE_FIELDS: Final[Mapping[str, str]] = {
    "peer_count": "peers in the routing table",
    "skill_count": "skills registered on this node",
    "tasks_inflight": "tasks this node is running for others",
    "tasks_completed": "tasks completed for others since start",
    "tasks_failed": "tasks whose handler failed since start",
    "tasks_refused": "tasks refused since start",
    "dht_invalid": "datagrams rejected (bad signature, replay, malformed) since start",
    "dht_invalid_delta": "... since the previous tick",
    "dht_rate_limited": "datagrams dropped by the per-IP rate limit since start",
    "dht_rate_limited_delta": "... since the previous tick",
    "dht_timeouts": "DHT requests that timed out since start",
    "dht_timeouts_delta": "... since the previous tick",
    "mail_outbox_pending": "mails waiting for delivery",
    "net_position": "credits peers owe us minus credits we owe",
    "largest_debt": "credits we owe our largest creditor",
    "largest_credit": "credits our largest debtor owes us",
    "settlement_candidates": "peers with an unsettled balance",
    "peer_balance": "credits the event's peer owes us (negative: we owe it)",
    "peer_credit_used_pct": "how much of its credit limit here the event's peer uses, in %",
}
"""What ``[gather] node`` (or a tick) puts into the envelope."""

_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_TEMPLATE_RE: Final = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_TOP_KEYS: Final = ("mode", "description", "trigger", "filter", "gather", "evaluate", "actions")


class RecipeError(ConfigError):
    """A recipe or prompt file is invalid (the message names the file and the key)."""


# ---------------------------------------------------------------------------- templates


def render(template: str, lookup: Callable[[str], str | None]) -> str:
    """Replace ``{{name}}`` placeholders; ``lookup`` answers a name (``envelope.``
    prefixes are dropped) or ``None``, which leaves the placeholder empty."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("envelope."):
            name = name[len("envelope."):]
        value = lookup(name)
        return "" if value is None else value

    return _TEMPLATE_RE.sub(one, template)


def has_template(text: str) -> bool:
    return _TEMPLATE_RE.search(text) is not None


# ---------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class Trigger:
    type: str
    msg_types: tuple[str, ...] = ()
    """``on_mail``: mail types that fire it; empty = every type."""
    events: tuple[str, ...] = ()
    """``on_event``: event names, or globs such as ``task.*``."""
    interval: float | None = None
    """``on_tick``: seconds between firings; ``None`` = the engine's ``tick_interval``."""
    match_field: str = ""
    match_pattern: re.Pattern[str] | None = None

    def wants_event(self, name: str) -> bool:
        return any(
            name == pattern or (_is_glob(pattern) and fnmatch.fnmatchcase(name, pattern))
            for pattern in self.events
        )


@dataclass(frozen=True, slots=True)
class Filter:
    trust_bypass: bool = False
    bypass_tiers: tuple[str, ...] = ("team",)
    bypass_action: str = "wake"
    rate_limit_window: float = 0.0
    rate_limit_max: int = 0
    rate_limit_action: str = "compile"
    cooldown_key: str = ""
    cooldown_seconds: float = 0.0
    cache_ttl: float = 0.0


@dataclass(frozen=True, slots=True)
class Gather:
    node: tuple[str, ...] = ()
    """Node-state fields (see :data:`NODE_FIELDS`)."""
    mail: int = 0
    """Recent mails from the sender (or the inbox) to include as ``recent_mail``."""
    text: str = ""
    """Static text, as ``static_text``."""

    def __bool__(self) -> bool:
        return bool(self.node or self.mail or self.text)


@dataclass(frozen=True, slots=True)
class Rule:
    field: str
    pattern: re.Pattern[str]
    action: str


@dataclass(frozen=True, slots=True)
class Evaluate:
    type: str = "hotwire"
    rules: tuple[Rule, ...] = ()
    default_action: str = "log"
    prompt: str = ""
    model: str = ""
    """Kept from the original format for the record; the configured backend's model
    answers (``[thrall.cascade] l1_model`` and the backend sections choose models)."""
    fallback_action: str = "log"
    actions: tuple[str, ...] = ()
    """``llm``: the verdicts the model may give (its output is constrained to them)."""
    cascade: bool = True
    """``llm``: run the L1 filter first when ``[thrall.cascade]`` is enabled."""
    l1_prompt: str = ""
    """``llm``: the L1 prompt for this recipe; empty = ``[thrall.cascade] l1_prompt``."""


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    kind: str
    record: bool = True
    """Record firings that end in this action (set false for high-volume drops)."""
    options: Mapping[str, Any] = field(default_factory=dict)

    def opt(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass(frozen=True, slots=True)
class Recipe:
    name: str
    source: str
    trigger: Trigger
    mode: str = "automated"
    description: str = ""
    filter: Filter = field(default_factory=Filter)
    gather: Gather = field(default_factory=Gather)
    evaluate: Evaluate = field(default_factory=Evaluate)
    actions: Mapping[str, Action] = field(default_factory=dict)
    """Every action the recipe can take, by name (built-ins included once referenced)."""

    def action(self, name: str) -> Action:
        return self.actions[name]

    @property
    def hotwire(self) -> bool:
        return self.evaluate.type == "hotwire"


# ---------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class LoadResult:
    recipes: dict[str, Recipe]
    errors: dict[str, str]
    """Recipe name → why its file was rejected."""


def load_recipe(path: Path, *, prompts: Iterable[str] = ()) -> Recipe:
    """Read and validate one recipe file; :class:`RecipeError` if anything is wrong."""
    source = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecipeError(f"{source}: cannot read the file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{source}: not valid UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{source}: invalid TOML: {exc}") from exc
    return parse_recipe(data, name=path.stem, source=source, prompts=prompts)


def recipe_files(folders: Sequence[Path]) -> dict[str, Path]:
    """Recipe name → file; a later folder's file overrides an earlier one's."""
    files: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                files[path.stem] = path
    return files


def load_recipes(folders: Sequence[Path], *, prompts: Iterable[str] = ()) -> LoadResult:
    """Every recipe in ``folders``; broken files are reported, the rest still load."""
    known = frozenset(prompts)
    recipes: dict[str, Recipe] = {}
    errors: dict[str, str] = {}
    for name, path in recipe_files(folders).items():
        try:
            recipes[name] = load_recipe(path, prompts=known)
        except RecipeError as exc:
            errors[name] = str(exc)
    return LoadResult(recipes, errors)


def parse_recipe(
    data: Mapping[str, Any], *, name: str, source: str, prompts: Iterable[str] = ()
) -> Recipe:
    """Validate a parsed recipe mapping; ``source`` names it in error messages."""
    r = _Reader(source)
    if not _NAME_RE.fullmatch(name):
        r.fail("", f"recipe name {name!r} (the file name) must be lowercase letters, digits, "
               "'-' or '_'")
    r.keys(data, "", _TOP_KEYS)
    mode = r.choice(data.get("mode", "automated"), "mode", MODES)
    description = r.string(data.get("description", ""), "description", allow_empty=True)
    if "trigger" not in data:
        r.fail("trigger", "missing; every recipe needs [trigger] with a type")
    trigger = _trigger(r, r.table(data["trigger"], "trigger"))
    filt = _filter(r, r.table(data.get("filter", {}), "filter"))
    gather = _gather(r, data.get("gather"))
    evaluate = _evaluate(r, r.table(data.get("evaluate", {}), "evaluate"), frozenset(prompts))
    actions = _actions(r, r.table(data.get("actions", {}), "actions"))
    referenced: list[tuple[str, str]] = [
        (f"evaluate.rules[{i}].action", rule.action) for i, rule in enumerate(evaluate.rules)
    ]
    if evaluate.type == "hotwire":
        referenced.append(("evaluate.default_action", evaluate.default_action))
    else:
        referenced.append(("evaluate.fallback_action", evaluate.fallback_action))
        referenced += [(f"evaluate.actions[{i}]", a) for i, a in enumerate(evaluate.actions)]
    if filt.trust_bypass:
        referenced.append(("filter.bypass_action", filt.bypass_action))
    if filt.rate_limit_max and filt.rate_limit_window:
        referenced.append(("filter.rate_limit_action", filt.rate_limit_action))
    for key, action in referenced:
        if action not in actions:
            if action not in ACTION_KINDS:
                r.fail(key, f"unknown action {_q(action)}: expected one of {_choices(ACTION_KINDS)}"
                       f" or an [actions.{action}] table")
            actions[action] = _action(r, action, {}, f"actions.{action}")
    if evaluate.type == "llm":
        for key, action in referenced:
            if actions[action].kind == "settle":
                r.fail(key, "settle is allowed on the hotwire path only (evaluate.type = "
                       '"hotwire"): an LLM must never move money')
        if not evaluate.actions:
            allowed = tuple(a for a in actions if actions[a].kind != "settle")
            evaluate = replace(evaluate, actions=allowed)
    return Recipe(name, source, trigger, mode, description, filt, gather, evaluate,
                  dict(actions))


def _trigger(r: _Reader, t: Mapping[str, Any]) -> Trigger:
    if "type" not in t:
        r.fail("trigger.type", f"missing; expected one of {_choices(TRIGGERS)}")
    kind = r.choice(t["type"], "trigger.type", TRIGGERS)
    allowed = {
        "on_mail": ("type", "msg_types", "match_field", "match_pattern"),
        "on_event": ("type", "events", "event_pattern", "match_field", "match_pattern"),
        "on_tick": ("type", "interval"),
    }[kind]
    r.keys(t, "trigger", allowed)
    msg_types = r.strings(t.get("msg_types", []), "trigger.msg_types")
    events: list[str] = list(r.strings(t.get("events", []), "trigger.events"))
    if "event_pattern" in t:
        events.append(r.string(t["event_pattern"], "trigger.event_pattern"))
    if kind == "on_event":
        if not events:
            r.fail("trigger.events", "on_event needs events = [...] (names or globs such as "
                   '"task.*") or event_pattern')
        for name in events:
            if name in SELF_EVENTS:
                r.fail("trigger.events", f"{_q(name)} is Thrall's own output; a recipe on it "
                       "would fire on its own firings")
    interval = None
    if "interval" in t:
        interval = r.number(t["interval"], "trigger.interval", 0.0, exclusive=True)
    match_field = r.string(t.get("match_field", ""), "trigger.match_field", allow_empty=True)
    match_pattern = None
    if "match_pattern" in t:
        match_pattern = r.regex(t["match_pattern"], "trigger.match_pattern")
        if not match_field:
            r.fail("trigger.match_field", "required with match_pattern")
    return Trigger(kind, msg_types, tuple(events), interval, match_field, match_pattern)


_FILTER_KEYS: Final = ("trust_bypass", "bypass_tiers", "bypass_action", "rate_limit_window",
                       "rate_limit_max", "rate_limit_action", "cooldown_key",
                       "cooldown_seconds", "cache_ttl")


def _filter(r: _Reader, t: Mapping[str, Any]) -> Filter:
    r.keys(t, "filter", _FILTER_KEYS)
    kw: dict[str, Any] = {}
    if "trust_bypass" in t:
        kw["trust_bypass"] = r.boolean(t["trust_bypass"], "filter.trust_bypass")
    if "bypass_tiers" in t:
        tiers = r.strings(t["bypass_tiers"], "filter.bypass_tiers")
        for i, tier in enumerate(tiers):
            r.choice(tier, f"filter.bypass_tiers[{i}]", ("team", "known", "unknown"))
        kw["bypass_tiers"] = tiers
    for key in ("bypass_action", "rate_limit_action"):
        if key in t:
            kw[key] = r.name(t[key], f"filter.{key}")
    for key in ("rate_limit_window", "cooldown_seconds", "cache_ttl"):
        if key in t:
            kw[key] = r.number(t[key], f"filter.{key}", 0.0)
    if "rate_limit_max" in t:
        kw["rate_limit_max"] = r.integer(t["rate_limit_max"], "filter.rate_limit_max", 0)
    if "cooldown_key" in t:
        kw["cooldown_key"] = r.string(t["cooldown_key"], "filter.cooldown_key", allow_empty=True)
    filt = Filter(**kw)
    if bool(filt.rate_limit_max) != bool(filt.rate_limit_window):
        r.fail("filter.rate_limit_max", "rate_limit_window and rate_limit_max go together "
               "(both > 0 to limit, or neither)")
    return filt


def _gather(r: _Reader, value: Any) -> Gather:
    if value is None:
        return Gather()
    if isinstance(value, list):  # the original catalog form: gather = ["peer_count", ...]
        return Gather(node=_node_fields(r, value, "gather"))
    t = r.table(value, "gather")
    r.keys(t, "gather", ("node", "mail", "text"))
    node: tuple[str, ...] = ()
    if "node" in t:
        if isinstance(t["node"], bool):
            node = tuple(NODE_FIELDS) if t["node"] else ()
        else:
            node = _node_fields(r, t["node"], "gather.node")
    mail = r.integer(t.get("mail", 0), "gather.mail", 0, 50)
    text = r.string(t.get("text", ""), "gather.text", allow_empty=True)
    return Gather(node, mail, text)


def _node_fields(r: _Reader, value: Any, key: str) -> tuple[str, ...]:
    names = r.strings(value, key)
    for i, name in enumerate(names):
        if name not in NODE_FIELDS:
            close = difflib.get_close_matches(name, NODE_FIELDS, n=1)
            hint = f"; did you mean {_q(close[0])}?" if close else ""
            r.fail(f"{key}[{i}]", f"unknown node field {_q(name)}{hint}")
    return names


_EVAL_KEYS: Final = {
    "hotwire": ("type", "rules", "default_action"),
    "llm": ("type", "prompt", "model", "fallback_action", "actions", "cascade", "l1_prompt"),
}


def _evaluate(r: _Reader, t: Mapping[str, Any], prompts: frozenset[str]) -> Evaluate:
    kind = r.choice(t.get("type", "hotwire"), "evaluate.type", EVALUATIONS)
    r.keys(t, "evaluate", _EVAL_KEYS[kind])
    if kind == "hotwire":
        rules: list[Rule] = []
        raw_rules = t.get("rules", [])
        if not isinstance(raw_rules, list):
            r.fail("evaluate.rules", "expected [[evaluate.rules]] tables")
        for i, raw in enumerate(raw_rules):
            key = f"evaluate.rules[{i}]"
            rule = r.table(raw, key)
            r.keys(rule, key, ("field", "pattern", "action"))
            for part in ("field", "pattern", "action"):
                if part not in rule:
                    r.fail(f"{key}.{part}", "missing; a rule needs field, pattern and action")
            rules.append(Rule(r.string(rule["field"], f"{key}.field"),
                              r.regex(rule["pattern"], f"{key}.pattern"),
                              r.name(rule["action"], f"{key}.action")))
        default = r.name(t.get("default_action", "log"), "evaluate.default_action")
        return Evaluate("hotwire", tuple(rules), default)
    if "prompt" not in t:
        r.fail("evaluate.prompt", 'missing; an LLM recipe names a prompt file (e.g. "triage")')
    prompt = r.string(t["prompt"], "evaluate.prompt")
    if prompt not in prompts:
        r.fail("evaluate.prompt", f"no prompt named {_q(prompt)} (prompts/{prompt}.toml in the "
               "recipes folder or the bundled prompts)")
    l1_prompt = r.string(t.get("l1_prompt", ""), "evaluate.l1_prompt", allow_empty=True)
    if l1_prompt and l1_prompt not in prompts:
        r.fail("evaluate.l1_prompt", f"no prompt named {_q(l1_prompt)}")
    actions = tuple(r.name(a, f"evaluate.actions[{i}]")
                    for i, a in enumerate(r.strings(t.get("actions", []), "evaluate.actions")))
    return Evaluate(
        "llm", prompt=prompt,
        model=r.string(t.get("model", ""), "evaluate.model", allow_empty=True),
        fallback_action=r.name(t.get("fallback_action", "log"), "evaluate.fallback_action"),
        actions=actions,
        cascade=r.boolean(t.get("cascade", True), "evaluate.cascade"),
        l1_prompt=l1_prompt,
    )


_ACTION_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "drop": (),
    "log": (),
    "compile": ("buffer", "summon_threshold", "summon_keywords", "flush_seconds"),
    "wake": ("message",),
    "summon": ("message",),
    "reply": ("template", "msg_type", "to"),
    "act": ("skill", "input", "timeout", "local", "error_buffer"),
    "settle": ("peer", "threshold", "max_peers", "timeout"),
}


def _actions(r: _Reader, t: Mapping[str, Any]) -> dict[str, Action]:
    actions: dict[str, Action] = {}
    for name, value in t.items():
        key = f"actions.{name}"
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            r.fail(key, "action names are lowercase letters, digits, '-' or '_'")
        actions[name] = _action(r, name, r.table(value, key), key)
    return actions


def _action(r: _Reader, name: str, t: Mapping[str, Any], key: str) -> Action:
    if "type" in t:
        kind = r.choice(t["type"], f"{key}.type", ACTION_KINDS)
    elif name in ACTION_KINDS:
        kind = name
    elif "skill" in t:
        kind = "act"
    else:
        r.fail(key, f"unknown action {_q(name)}: set type = one of {_choices(ACTION_KINDS)}")
    r.keys(t, key, ("type", "record", *_ACTION_KEYS[kind]))
    record = r.boolean(t.get("record", True), f"{key}.record")
    opts: dict[str, Any] = {}
    if kind == "compile":
        opts["buffer"] = r.string(t.get("buffer", ""), f"{key}.buffer", allow_empty=True)
        opts["summon_threshold"] = r.integer(t.get("summon_threshold", 0),
                                             f"{key}.summon_threshold", 0)
        keywords = r.strings(t.get("summon_keywords", []), f"{key}.summon_keywords")
        opts["summon_keywords"] = keywords
        opts["keyword_re"] = (
            re.compile(r"\b(" + "|".join(re.escape(k) for k in keywords) + r")\b", re.IGNORECASE)
            if keywords else None
        )
        opts["flush_seconds"] = r.number(t.get("flush_seconds", 0), f"{key}.flush_seconds", 0.0)
    elif kind in ("wake", "summon"):
        opts["message"] = r.string(t.get("message", ""), f"{key}.message", allow_empty=True)
    elif kind == "reply":
        opts["template"] = r.string(t.get("template", "Message received."), f"{key}.template")
        opts["msg_type"] = r.string(t.get("msg_type", "reply"), f"{key}.msg_type")
        opts["to"] = r.string(t.get("to", "{{from_node}}"), f"{key}.to")
    elif kind == "act":
        if "skill" not in t:
            r.fail(f"{key}.skill", "missing; act calls a skill: skill = \"name\"")
        opts["skill"] = r.string(t["skill"], f"{key}.skill")
        opts["input"] = dict(r.table(t.get("input", {}), f"{key}.input"))
        opts["timeout"] = r.number(t.get("timeout", 30.0), f"{key}.timeout", 0.0, exclusive=True)
        opts["local"] = r.boolean(t.get("local", False), f"{key}.local")
        opts["error_buffer"] = r.string(t.get("error_buffer", ""), f"{key}.error_buffer",
                                        allow_empty=True)
    elif kind == "settle":
        opts["peer"] = r.string(t.get("peer", ""), f"{key}.peer", allow_empty=True)
        opts["threshold"] = r.number(t.get("threshold", 1.0), f"{key}.threshold", 0.0)
        opts["max_peers"] = r.integer(t.get("max_peers", 5), f"{key}.max_peers", 1)
        opts["timeout"] = r.number(t.get("timeout", 30.0), f"{key}.timeout", 0.0, exclusive=True)
    return Action(name, kind, record, opts)


# ---------------------------------------------------------------------------- reading


class _Reader:
    """Type checks that fail with ``file: key: problem``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> NoReturn:
        raise RecipeError(f"{self.source}: {key}: {problem}" if key else
                          f"{self.source}: {problem}")

    def keys(self, table: Mapping[str, Any], prefix: str, known: Sequence[str]) -> None:
        for name in table:
            if name not in known:
                key = f"{prefix}.{name}" if prefix else str(name)
                close = difflib.get_close_matches(str(name), known, n=1)
                hint = f"did you mean {_q(close[0])}?" if close else \
                    f"expected one of {_choices(known)}" if known else "no keys are allowed here"
                self.fail(key, f"unknown key; {hint}")

    def table(self, value: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(key, f"expected a table, got {_kind(value)}")
        return value

    def string(self, value: Any, key: str, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {_kind(value)}")
        if not allow_empty and not value.strip():
            self.fail(key, "expected a non-empty string")
        return value

    def name(self, value: Any, key: str) -> str:
        text = self.string(value, key)
        if not _NAME_RE.fullmatch(text):
            self.fail(key, f"{_q(text)} is not an action name (lowercase letters, digits, "
                      "'-' or '_')")
        return text

    def strings(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.fail(key, f"expected an array of strings, got {_kind(value)}")
        return tuple(self.string(v, f"{key}[{i}]") for i, v in enumerate(value))

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {_kind(value)}")
        return value

    def integer(self, value: Any, key: str, minimum: int, maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an integer, got {_kind(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            self.fail(key, f"expected an integer {bounds}, got {value}")
        return value

    def number(self, value: Any, key: str, minimum: float, *, exclusive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"expected a number, got {_kind(value)}")
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            self.fail(key, "expected a finite number")
        if number < minimum or (exclusive and number == minimum):
            self.fail(key, f"expected a number {'>' if exclusive else '>='} {minimum:g}, "
                      f"got {value}")
        return number

    def choice(self, value: Any, key: str, choices: Sequence[str]) -> str:
        if not isinstance(value, str) or value not in choices:
            close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) \
                else []
            hint = f" (did you mean {_q(close[0])}?)" if close else ""
            shown = _q(value) if isinstance(value, str) else _kind(value)
            self.fail(key, f"expected one of {_choices(choices)}, got {shown}{hint}")
        return value

    def regex(self, value: Any, key: str) -> re.Pattern[str]:
        text = self.string(value, key, allow_empty=True)
        try:
            return re.compile(text, re.IGNORECASE)
        except re.error as exc:
            self.fail(key, f"bad regex {_q(text)}: {exc}")


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _choices(choices: Iterable[str]) -> str:
    return ", ".join(_q(c) for c in choices)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string {_q(value[:40])}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return f"a {type(value).__name__}"
