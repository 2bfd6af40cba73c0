"""Thrall on a running node: the asyncio glue around the decision core.

It listens to ``node.events`` (every listener call only queues the event), fires
``on_mail`` / ``on_event`` recipes from that queue and ``on_tick`` recipes on their
intervals, and records every firing with ``node.record_journal("recipe", ...)`` so the
cockpit streams it and the console shows it. Hotwire firings with local actions run
inline, in arrival order; LLM evaluations and network actions (``act``, ``settle``) run
as tasks the engine owns, so a slow model never holds up the rest.

Touching ``thrall.reload`` in the recipes folder reloads recipes, prompts and the
``[thrall]`` config (backends are rebuilt only if their settings changed); a file that
no longer loads keeps its previous good version, and the reload record says why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from knarr.config import ThrallConfig
from knarr.errors import ConfigError
from knarr.node.events import Event
from knarr.recipes.actions import Actions, Outcome
from knarr.recipes.backends import Backend, build_backend
from knarr.recipes.cascade import Evaluator
from knarr.recipes.gather import Gatherer
from knarr.recipes.pipeline import (
    Decision,
    Envelope,
    Pipeline,
    event_envelope,
    tick_envelope,
)
from knarr.recipes.prompts import Prompt, load_prompts
from knarr.recipes.recipe import (
    SELF_EVENTS,
    SYNC_KINDS,
    Recipe,
    RecipeError,
    load_recipe,
    recipe_files,
)

if TYPE_CHECKING:
    from knarr.node.node import Node

log = logging.getLogger("knarr.thrall")

BUNDLED: Final = Path(__file__).parent / "bundled"
RELOAD_SENTINEL: Final = "thrall.reload"
BACKPRESSURE: Final = "thrall.backpressure"
BACKPRESSURE_EVERY: Final = 10.0
BATCH: Final = 256
PRUNE_EVERY: Final = 300.0


@dataclass(slots=True)
class Firing:
    """One recipe's answer to one trigger, as recorded."""

    recipe: str
    trigger: str
    source: str
    from_node: str
    tier: str
    inputs: str
    path: list[str]
    evaluation: str
    verdict: str
    action: str
    detail: str
    ok: bool
    latency_ms: float
    backend: str
    mode: str
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        data = {
            "recipe": self.recipe, "trigger": self.trigger, "source": self.source,
            "from_node": self.from_node, "tier": self.tier, "inputs": self.inputs,
            "path": self.path, "evaluation": self.evaluation, "verdict": self.verdict,
            "action": self.action, "detail": self.detail, "ok": self.ok,
            "latency_ms": self.latency_ms, "backend": self.backend, "mode": self.mode,
        }
        data.update(self.extra)
        return data


@dataclass(slots=True)
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    """Files that do not load and had no previous good version."""
    kept: dict[str, str] = field(default_factory=dict)
    """Files that no longer load; their previous version stays in use."""
    removed: list[str] = field(default_factory=list)
    config_error: str = ""
    backends: str = ""

    @property
    def problems(self) -> list[str]:
        out = [f"{why} (not loaded)" for why in self.rejected.values()]
        out += [f"{why} (kept the previous version)" for why in self.kept.values()]
        if self.config_error:
            out.append(f"{self.config_error} (kept the previous [thrall] settings)")
        return out

    def summary(self) -> str:
        text = f"{len(self.loaded)} recipes loaded"
        if self.removed:
            text += f", {len(self.removed)} removed"
        if self.backends:
            text += f"; backend {self.backends}"
        problems = self.problems
        if problems:
            text += f"; {len(problems)} problem(s): " + "; ".join(problems)
        return text


class Thrall:
    """The recipe engine of one node."""

    def __init__(
        self,
        node: Node,
        config: ThrallConfig | None = None,
        *,
        base_dir: Path | None = None,
        recipes_dir: Path | None = None,
        reload_config: Callable[[], ThrallConfig] | None = None,
        credit_limit_for: Callable[[str], float] | None = None,
        clock: Callable[[], float] | None = None,
        poll_interval: float = 1.0,
        queue_size: int = 10_000,
    ) -> None:
        self.node = node
        self.config = config or ThrallConfig()
        self.base_dir = (base_dir or Path.cwd()).absolute()
        self._recipes_dir_override = recipes_dir
        self.reload_config = reload_config
        self.clock = clock or node.clock
        self.poll_interval = poll_interval
        self.pipeline = Pipeline({}, self.config.trust_tiers, self.clock,
                                 self.config.tick_interval)
        self.prompts: dict[str, Prompt] = {}
        self.evaluator = Evaluator({}, cascade=self.config.cascade,
                                   queue_timeout=self.config.queue_timeout,
                                   max_queue=self.config.max_queue)
        self.gatherer = Gatherer(node, credit_limit_for or (lambda _: 100.0))
        self.actions = Actions(node, clock=self.clock, delegate_key=self.delegate_key)
        self.stats = {"events": 0, "fired": 0, "skipped": 0, "dropped_events": 0}
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=queue_size)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._unlisten: Callable[[], None] | None = None
        self._sentinel_mtime: int | None = None
        self._pressure_at = 0.0
        self._pruned_at = 0.0
        self._pressure_dropped = 0
        self._pressure_events = 0

    # ------------------------------------------------------------------ paths

    @property
    def recipes_dir(self) -> Path:
        return self._recipes_dir_override or self.base_dir / self.config.recipes_dir

    @property
    def delegate_key(self) -> Path:
        return self.base_dir / self.config.delegate_key

    @property
    def folders(self) -> list[Path]:
        return ([BUNDLED] if self.config.bundled else []) + [self.recipes_dir]

    @property
    def recipes(self) -> dict[str, Recipe]:
        return dict(self.pipeline.recipes)

    # ------------------------------------------------------------------ loading

    def load(self) -> LoadReport:
        """Read prompts and recipes; a broken file keeps its previous good version."""
        report = LoadReport()
        prompts, prompt_errors = load_prompts([f / "prompts" for f in self.folders])
        for name, why in prompt_errors.items():
            if name in self.prompts:
                prompts[name] = self.prompts[name]
                report.kept[f"prompt:{name}"] = why
            else:
                report.rejected[f"prompt:{name}"] = why
        self.prompts = prompts
        self.evaluator.prompts = dict(prompts)
        old = self.pipeline.recipes
        recipes: dict[str, Recipe] = {}
        for name, path in recipe_files(self.folders).items():
            try:
                recipes[name] = load_recipe(path, prompts=prompts)
            except RecipeError as exc:
                if name in old:
                    recipes[name] = old[name]
                    report.kept[name] = str(exc)
                else:
                    report.rejected[name] = str(exc)
        report.removed = sorted(set(old) - set(recipes))
        report.loaded = sorted(recipes)
        self.pipeline.replace(recipes)
        for problem in report.problems:
            log.warning("thrall: %s", problem)
        return report

    def _backends(self) -> tuple[Backend | None, Backend | None]:
        c = self.config
        l2 = build_backend(c.backend, c, base_dir=self.base_dir, clock=self.clock)
        l1 = None
        if c.cascade.enabled:
            l1 = build_backend(c.cascade.l1_backend, c, base_dir=self.base_dir,
                               model=c.cascade.l1_model, clock=self.clock)
        return l2, l1

    async def configure(self, config: ThrallConfig) -> list[Backend]:
        """Apply new ``[thrall]`` settings; swaps backends whose settings changed and
        returns the replaced ones (already closing)."""
        self.config = config
        self.pipeline.tiers = config.trust_tiers
        self.pipeline.tick_interval = config.tick_interval
        self.evaluator.cascade = config.cascade
        self.evaluator.queue_timeout = config.queue_timeout
        self.evaluator.max_queue = config.max_queue
        self.actions.delegate_key = self.delegate_key
        before = (self.evaluator.l2, self.evaluator.l1)
        l2, l1 = self._backends()
        old = self.evaluator.swap(l2=l2, l1=l1)
        for replaced in old:
            self._spawn(replaced.close())
        for backend in (self.evaluator.l2, self.evaluator.l1):
            if backend is not None and backend.kind == "local" and backend not in before:
                self._spawn(self._warm(backend))
        return old

    async def _warm(self, backend: Backend) -> None:
        try:
            await backend.warm()
        except Exception as exc:  # the first request will report it as its fallback reason
            log.warning("thrall: cannot load %s: %s", backend.label, exc)

    async def reload(self) -> LoadReport:
        """Re-read the ``[thrall]`` config (when it comes from a file) and the recipes."""
        swapped: list[Backend] = []
        config_error = ""
        if self.reload_config is not None:
            try:
                new = self.reload_config()
            except ConfigError as exc:
                config_error = str(exc)
            else:
                swapped = await self.configure(new)
        report = self.load()
        report.config_error = config_error
        if swapped:
            report.backends = self.evaluator.label
        self._journal("reload", report)
        return report

    def _journal(self, event: str, report: LoadReport) -> None:
        self.node.record_journal("recipe", event, {
            "recipe": "thrall", "action": event, "detail": report.summary(),
            "loaded": len(report.loaded), "rejected": report.rejected, "kept": report.kept,
            "ok": not report.problems,
        })

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> LoadReport:
        """Load everything, subscribe to the node's events and start the loops."""
        await self.configure(self.config)
        report = self.load()
        report.backends = self.evaluator.label
        self._sentinel_mtime = self._sentinel()
        self._journal("start", report)
        self._unlisten = self.node.events.listen(self._on_event)
        self._loops = [
            asyncio.create_task(self._consume(), name="thrall-events"),
            asyncio.create_task(self._housekeep(), name="thrall-ticks"),
        ]
        log.info("thrall: %s", report.summary())
        return report

    async def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        tasks = [*self._loops, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loops.clear()
        self._tasks.clear()
        for backend in (self.evaluator.l2, self.evaluator.l1):
            if backend is not None:
                await backend.close()

    async def idle(self) -> None:
        """Wait until every queued event and running firing is done (for tests)."""
        while True:
            if self._loops:
                await self._queue.join()
            if not self._tasks:
                return
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ events

    def _on_event(self, event: Event) -> None:
        if event.type in SELF_EVENTS or event.type == BACKPRESSURE:
            return
        self.stats["events"] += 1
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.stats["dropped_events"] += 1

    async def _consume(self) -> None:
        """Handle queued events in batches, each batch's firing records committed in one
        transaction (hotwire firings with local actions never yield to the loop, so
        nothing else writes in between)."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                with self.node.store.transaction():
                    for event in batch:
                        try:
                            await self.dispatch(event)
                        except Exception:  # a broken recipe must not stop the others
                            log.exception("thrall: handling %s failed", event.type)
            except Exception:
                log.exception("thrall: recording %d firings failed", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def dispatch(self, event: Event) -> list[Firing]:
        """Fire the recipes ``event`` triggers. Fast firings finish before this returns
        (and are returned); LLM and network ones continue as tasks."""
        started = time.perf_counter()
        env = event_envelope(event.type, event.data, event.time)
        recipes = self.pipeline.matching(env)
        if not recipes:
            return []
        fired = []
        for recipe in recipes:
            own = Envelope(env.source, dict(env.fields), env.sender, env.time) \
                if len(recipes) > 1 and recipe.gather else env
            decision = self.pipeline.decide(recipe, own, self._gatherer_for(recipe))
            if decision.stage == "skip":
                self.stats["skipped"] += 1
                continue
            if decision.action is not None and (
                recipe.action(decision.action).kind in SYNC_KINDS or recipe.mode == "manual"
            ):
                firing = await self._finish(decision, started)
                if firing is not None:
                    fired.append(firing)
            else:
                self._spawn(self._finish(decision, started))
        return fired

    def _gatherer_for(self, recipe: Recipe) -> Callable[[Envelope], None] | None:
        if not recipe.gather:
            return None

        def gather(env: Envelope) -> None:
            state = self.gatherer.node_state(recipe.name) if recipe.gather.node else None
            self.gatherer.fill(env, recipe.gather, state)

        return gather

    async def fire(self, recipe: Recipe, env: Envelope) -> Firing | None:
        """Run one recipe on one envelope to the end (``None`` if the filter skipped)."""
        started = time.perf_counter()
        decision = self.pipeline.decide(recipe, env, self._gatherer_for(recipe))
        if decision.stage == "skip":
            self.stats["skipped"] += 1
            return None
        return await self._finish(decision, started)

    async def _finish(self, decision: Decision, started: float) -> Firing | None:
        recipe, env = decision.recipe, decision.envelope
        path = decision.path
        backend = "none"
        action_name = decision.action
        reason = decision.reason
        extra: dict[str, Any] = {}
        if action_name is None:  # the LLM decides
            verdict = await self.evaluator.evaluate(recipe, env, decision.tier)
            path.extend(verdict.path)
            action_name, reason, backend = verdict.action, verdict.reason, verdict.backend
            if verdict.cost:
                extra["cost"] = round(verdict.cost, 6)
            if not verdict.fallback:
                self.pipeline.remember(recipe, env, action_name)
            self.pipeline.arm_cooldown(recipe, env, action_name)
            evaluation = "fallback" if verdict.fallback else "llm"
        else:
            evaluation = decision.stage
        action = recipe.action(action_name)
        if recipe.mode == "manual":
            outcome = Outcome(f"manual mode: would {action.kind} ({action_name})")
        else:
            try:
                outcome = await self.actions.run(recipe, action, env, reason)
            except Exception as exc:  # an action bug is recorded, never fatal
                log.exception("thrall: action %s of %s failed", action_name, recipe.name)
                outcome = Outcome(f"action failed: {exc}", ok=False)
        path.append(f"action {action_name} ({action.kind}): {outcome.detail}")
        extra.update(outcome.extra)
        firing = Firing(
            recipe.name, recipe.trigger.type, env.source, env.sender, decision.tier,
            env.summary(), path, evaluation, action_name, action.kind, outcome.detail,
            outcome.ok, round((time.perf_counter() - started) * 1000, 3), backend,
            recipe.mode, extra,
        )
        self.stats["fired"] += 1
        if action.record:
            self.node.record_journal("recipe", "fired", firing.record())
        return firing

    # ------------------------------------------------------------------ ticks

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.housekeeping()
            except Exception:
                log.exception("thrall: housekeeping failed")

    async def housekeeping(self) -> list[Firing]:
        """Reload if asked, run due ticks, flush due digests, report backpressure, and
        now and then forget expired rate-limit windows, cooldowns and cached verdicts."""
        mtime = self._sentinel()
        if mtime is not None and mtime != self._sentinel_mtime:
            self._sentinel_mtime = mtime
            await self.reload()
        fired = await self.tick()
        self.flush_due()
        self.check_backpressure()
        now = self.clock()
        if now - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = now
            self.pipeline.prune()
        return fired

    def _sentinel(self) -> int | None:
        try:
            return (self.recipes_dir / RELOAD_SENTINEL).stat().st_mtime_ns
        except OSError:
            return None

    async def tick(self) -> list[Firing]:
        """Fire the ``on_tick`` recipes whose interval has passed."""
        fired = []
        for recipe in self.pipeline.due_ticks():
            started = time.perf_counter()
            env = tick_envelope(self.gatherer.node_state(recipe.name), self.clock())
            self.gatherer.fill(env, recipe.gather)
            decision = self.pipeline.decide(recipe, env)
            if decision.stage == "skip":
                self.stats["skipped"] += 1
                continue
            firing = await self._finish(decision, started)
            if firing is not None:
                fired.append(firing)
        return fired

    def flush_due(self) -> None:
        """Flush digests whose ``flush_seconds`` have passed (recorded as ``digest``)."""
        for name in self.actions.due_flushes():
            outcome = self.actions.flush(name, "timer")
            self.node.record_journal("recipe", "digest", {
                "recipe": outcome.extra["digest"]["recipe"], "trigger": "timer",
                "action": "summon", "detail": outcome.detail, "ok": True, **outcome.extra,
            })

    def check_backpressure(self) -> None:
        """Emit ``thrall.backpressure`` (for the backpressure recipe) while the LLM queue
        is not empty or events were dropped, at most every few seconds."""
        now = self.clock()
        if now - self._pressure_at < BACKPRESSURE_EVERY:
            return
        dropped = self.stats["dropped_events"] - self._pressure_dropped
        events = self.stats["events"] - self._pressure_events
        depth = self.evaluator.queue_depth
        if depth == 0 and dropped == 0:
            return
        self._pressure_at = now
        self._pressure_dropped = self.stats["dropped_events"]
        self._pressure_events = self.stats["events"]
        rate = int(dropped * 100 // events) if events else 0
        event = self.node.events.emit(BACKPRESSURE, queue_depth=depth, dropped=dropped,
                                      bus_drop_rate=rate, event_queue=self._queue.qsize())
        self._spawn(self.dispatch(event))  # not through the queue: it may be the full one
