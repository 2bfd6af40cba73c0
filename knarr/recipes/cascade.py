"""The LLM cascade: an L1 model that only decides drop / escalate, then the L2 backend.

Each backend serves one request at a time. A request that cannot get the backend within
``queue_timeout``, finds ``max_queue`` requests already waiting, outlives the backend's
timeout, gets an answer outside the recipe's actions, or meets a spent cost budget takes
the recipe's ``fallback_action`` instead; the pipeline never blocks on a model. An L1
failure is not fatal: the request goes on to L2.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from knarr.config import ThrallCascadeConfig
from knarr.recipes.backends import Backend, BackendError, parse_verdict, system_prompt
from knarr.recipes.pipeline import Envelope
from knarr.recipes.prompts import Prompt
from knarr.recipes.recipe import Recipe, render

log = logging.getLogger("knarr.thrall")

L1_CHOICES = ("drop", "escalate")


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str
    reason: str
    path: tuple[str, ...]
    backend: str
    fallback: bool = False
    cost: float = 0.0


class _Unanswered(Exception):
    """The backend gave no usable verdict; ``str()`` says why."""


class Slot:
    """One backend's queue: a request at a time, at most ``max_queue`` waiting."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.lock = asyncio.Lock()
        self.waiting = 0


class Evaluator:
    """Runs LLM recipes' evaluations through the configured backends."""

    def __init__(
        self,
        prompts: Mapping[str, Prompt],
        *,
        l2: Backend | None = None,
        l1: Backend | None = None,
        cascade: ThrallCascadeConfig | None = None,
        queue_timeout: float = 5.0,
        max_queue: int = 16,
    ) -> None:
        self.prompts = dict(prompts)
        self.cascade = cascade or ThrallCascadeConfig()
        self.queue_timeout = queue_timeout
        self.max_queue = max_queue
        self._l2 = Slot(l2) if l2 is not None else None
        self._l1 = Slot(l1) if l1 is not None else None
        self.counts = {"l1_drop": 0, "l1_escalate": 0, "l1_error": 0, "l2": 0, "fallback": 0}

    @property
    def l2(self) -> Backend | None:
        return self._l2.backend if self._l2 else None

    @property
    def l1(self) -> Backend | None:
        return self._l1.backend if self._l1 else None

    @property
    def queue_depth(self) -> int:
        return sum(s.waiting for s in (self._l1, self._l2) if s is not None)

    def swap(self, *, l2: Backend | None, l1: Backend | None) -> list[Backend]:
        """Use other backends from now on (requests under way finish on the old ones);
        returns the replaced backends for the caller to close."""
        old: list[Backend] = []
        if (self.l2.settings if self.l2 else None) != (l2.settings if l2 else None):
            if self.l2 is not None:
                old.append(self.l2)
            self._l2 = Slot(l2) if l2 is not None else None
        if (self.l1.settings if self.l1 else None) != (l1.settings if l1 else None):
            if self.l1 is not None:
                old.append(self.l1)
            self._l1 = Slot(l1) if l1 is not None else None
        return old

    @property
    def label(self) -> str:
        if self.l2 is None:
            return "none"
        if self.l1 is not None and self.cascade.enabled:
            return f"{self.l1.label}>{self.l2.label}"
        return self.l2.label

    async def evaluate(self, recipe: Recipe, env: Envelope, tier: str) -> Verdict:
        ev = recipe.evaluate
        fallback = ev.fallback_action
        path: list[str] = []
        l1_reason = ""
        l1_prompt_name = ev.l1_prompt or self.cascade.l1_prompt
        if ev.cascade and self.cascade.enabled and self._l1 is not None:
            l1_prompt = self.prompts.get(l1_prompt_name)
            if l1_prompt is None:
                path.append(f"l1: no prompt {l1_prompt_name!r}, skipped")
            else:
                try:
                    action, reason, _ = await self._ask(
                        self._l1, l1_prompt, env, tier, "", L1_CHOICES
                    )
                except _Unanswered as exc:
                    self.counts["l1_error"] += 1
                    path.append(f"l1 {self._l1.backend.label}: {exc}; on to L2")
                else:
                    path.append(f"l1 {self._l1.backend.label}: {action} ({reason})")
                    if action == "drop":
                        self.counts["l1_drop"] += 1
                        return Verdict("drop", reason or "dropped by L1", tuple(path),
                                       self._l1.backend.label)
                    self.counts["l1_escalate"] += 1
                    l1_reason = reason
        if self._l2 is None:
            return self._fallback(fallback, "no LLM backend configured ([thrall] backend)",
                                  path, "none")
        prompt = self.prompts.get(ev.prompt)
        if prompt is None:
            return self._fallback(fallback, f"prompt {ev.prompt!r} is not loaded", path,
                                  self._l2.backend.label)
        try:
            action, reason, cost = await self._ask(
                self._l2, prompt, env, tier, l1_reason, ev.actions
            )
        except _Unanswered as exc:
            return self._fallback(fallback, str(exc), path, self._l2.backend.label)
        self.counts["l2"] += 1
        path.append(f"l2 {self._l2.backend.label}: {action} ({reason})")
        return Verdict(action, reason, tuple(path), self._l2.backend.label, cost=cost)

    def _fallback(self, action: str, why: str, path: list[str], backend: str) -> Verdict:
        self.counts["fallback"] += 1
        path.append(f"fallback {action}: {why}")
        return Verdict(action, why, tuple(path), backend, fallback=True)

    async def _ask(
        self, slot: Slot, prompt: Prompt, env: Envelope, tier: str, l1_reason: str,
        choices: Sequence[str],
    ) -> tuple[str, str, float]:
        backend = slot.backend
        refusal = backend.refuses()
        if refusal:
            raise _Unanswered(refusal)
        if slot.waiting >= self.max_queue:
            raise _Unanswered(f"queue full ({slot.waiting} waiting)")

        def lookup(name: str) -> str | None:
            if name == "filter.tier":
                return tier
            if name == "cascade.reason":
                return f"A fast filter escalated this: {l1_reason}" if l1_reason else ""
            return env.fields.get(name)

        text = render(prompt.content, lookup)
        system = (prompt.system + "\n" if prompt.system else "") + system_prompt(choices)
        slot.waiting += 1
        try:
            async with asyncio.timeout(self.queue_timeout):
                await slot.lock.acquire()
        except TimeoutError:
            raise _Unanswered(f"backend busy for {self.queue_timeout:g} s (queue full)") from None
        finally:
            slot.waiting -= 1
        work = asyncio.ensure_future(backend.complete(system, text, choices))
        released = False
        try:
            async with asyncio.timeout(backend.timeout):
                completion = await asyncio.shield(work)
        except TimeoutError:
            released = True
            self._release_when_done(slot, work)
            raise _Unanswered(f"no answer within {backend.timeout:g} s") from None
        except BackendError as exc:
            raise _Unanswered(str(exc)) from None
        finally:
            if not released:
                slot.lock.release()
        cost = backend.spend(completion)
        try:
            action, reason = parse_verdict(completion.text, choices)
        except BackendError as exc:
            raise _Unanswered(str(exc)) from None
        return action, reason, cost

    @staticmethod
    def _release_when_done(slot: Slot, work: asyncio.Future[Any]) -> None:
        """Hold the backend until the abandoned request really stops: an HTTP request is
        cancelled; a llama.cpp thread cannot be, so the next request waits for it."""
        if slot.backend.kind != "local":
            work.cancel()

        def done(task: asyncio.Future[Any]) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.debug("abandoned LLM request ended with %s", task.exception())
            slot.lock.release()

        work.add_done_callback(done)
