"""LLM backends behind one interface: ``local`` (llama-cpp-python in a worker thread),
``ollama`` and ``openai`` (aiohttp; any OpenAI-compatible chat completions API).

Every backend is asked for one JSON object ``{"action": ..., "reason": ...}`` whose
action is constrained to the recipe's choices: a GBNF grammar for llama.cpp, a JSON
schema for ollama's ``format`` and OpenAI's ``response_format``. Even a weak (or random)
model's answer therefore parses; :func:`parse_verdict` still checks it, and anything off
is a :class:`BackendError`, which sends the recipe to its fallback.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

from knarr.config import ThrallConfig
from knarr.errors import KnarrError

REASON_CHARS: Final = 60
_ACTION_RE: Final = re.compile(r'"action"\s*:\s*"([a-z0-9_-]+)"')
_REASON_RE: Final = re.compile(r'"reason"\s*:\s*"([^"]*)')


class BackendError(KnarrError):
    """An LLM backend could not give a verdict (the recipe takes its fallback action)."""


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


def system_prompt(choices: Sequence[str]) -> str:
    return (
        "Answer with exactly one JSON object and nothing else: "
        '{"action": "<one of: ' + ", ".join(choices) + '>", "reason": "<a few words>"}'
    )


def verdict_schema(choices: Sequence[str]) -> dict[str, Any]:
    """The JSON schema of a verdict (ollama ``format``, OpenAI ``response_format``)."""
    return {
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": list(choices)},
            "reason": {"type": "string", "maxLength": REASON_CHARS},
        },
        "required": ["action", "reason"],
        "additionalProperties": False,
    }


def verdict_grammar(choices: Sequence[str]) -> str:
    """A llama.cpp GBNF grammar that admits only a verdict with one of ``choices``."""
    alternatives = " | ".join(json.dumps(c) for c in choices)
    return (
        'root ::= "{\\"action\\": \\"" action "\\", \\"reason\\": \\"" reason "\\"}"\n'
        f"action ::= {alternatives}\n"
        f"reason ::= [a-zA-Z0-9 ,.:;()'-]{{0,{REASON_CHARS}}}\n"
    )


def parse_verdict(text: str, choices: Sequence[str]) -> tuple[str, str]:
    """``(action, reason)`` from a model's answer; :class:`BackendError` unless the
    action is one of ``choices``. Tolerates code fences and a truncated reason."""
    cleaned = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```")
    action = reason = None
    try:
        value = json.loads(cleaned)
        if isinstance(value, dict):
            action, reason = value.get("action"), value.get("reason", "")
    except ValueError:
        match = _ACTION_RE.search(cleaned)
        if match:
            action = match.group(1)
            found = _REASON_RE.search(cleaned)
            reason = found.group(1) if found else ""
    if not isinstance(action, str):
        raise BackendError(f"the model's answer has no action: {text[:80]!r}")
    if action not in choices:
        raise BackendError(f"the model chose {action!r}, not one of {', '.join(choices)}")
    return action, str(reason or "")[:200]


class Backend(abc.ABC):
    """One model behind one API. Callers serialise requests (one at a time)."""

    kind: ClassVar[str]
    model: str
    timeout: float

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.model}"

    @property
    def settings(self) -> tuple[Any, ...]:
        """Everything that configures it: a backend is rebuilt when this changes."""
        return (self.kind, self.model, self.timeout)

    @abc.abstractmethod
    async def complete(self, system: str, prompt: str, choices: Sequence[str]) -> Completion:
        """The model's answer, constrained to a verdict over ``choices``."""

    def refuses(self) -> str | None:
        """Why it would not take a request now (e.g. its budget is spent), or ``None``."""
        return None

    def spend(self, completion: Completion) -> float:
        """Account for a completion; returns its cost (0 for free backends)."""
        return 0.0

    async def warm(self) -> None:
        """Load what the first request would otherwise wait for."""
        return None

    async def close(self) -> None:
        """Release connections or the model."""
        return None


# ---------------------------------------------------------------------------- local


class LocalBackend(Backend):
    """llama-cpp-python: the model is loaded once and run in a worker thread, never on
    the event loop; a thread lock keeps one inference at a time even after a caller
    stopped waiting."""

    kind = "local"

    def __init__(self, model_path: Path, *, n_threads: int = 2, n_ctx: int = 1024,
                 max_tokens: int = 96, timeout: float = 30.0, seed: int = 0) -> None:
        self.model_path = model_path
        self.model = model_path.name
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.seed = seed
        self._lock = threading.Lock()
        self._llama: Any = None
        self._grammars: dict[tuple[str, ...], Any] = {}

    @property
    def settings(self) -> tuple[Any, ...]:
        return (self.kind, str(self.model_path), self.n_threads, self.n_ctx, self.max_tokens,
                self.timeout)

    @staticmethod
    def _module() -> Any:
        try:
            return importlib.import_module("llama_cpp")
        except ImportError as exc:
            raise BackendError(
                "the local backend needs llama-cpp-python: pip install 'knarr[llm]'"
            ) from exc

    def _load(self) -> Any:
        if self._llama is None:
            if not self.model_path.is_file():
                raise BackendError(f"no model file at {self.model_path} ([thrall.local] "
                                   "model_path)")
            llama_cpp = self._module()
            try:
                self._llama = llama_cpp.Llama(
                    model_path=str(self.model_path), n_ctx=self.n_ctx,
                    n_threads=self.n_threads, n_threads_batch=self.n_threads,
                    seed=self.seed, verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                raise BackendError(f"cannot load {self.model_path}: {exc}") from exc
        return self._llama

    def _grammar(self, choices: tuple[str, ...]) -> Any:
        grammar = self._grammars.get(choices)
        if grammar is None:
            llama_cpp = self._module()
            grammar = self._grammars[choices] = llama_cpp.LlamaGrammar.from_string(
                verdict_grammar(choices), verbose=False
            )
        return grammar

    def _run(self, system: str, prompt: str, choices: tuple[str, ...]) -> Completion:
        with self._lock:
            llama = self._load()
            try:
                out = llama.create_completion(
                    prompt=f"{system}\n\n{prompt}\n\nAnswer: ", max_tokens=self.max_tokens,
                    temperature=0.0, grammar=self._grammar(choices),
                )
            except (ValueError, RuntimeError) as exc:
                raise BackendError(f"llama.cpp failed: {exc}") from exc
        usage = out.get("usage") or {}
        return Completion(str(out["choices"][0]["text"]), int(usage.get("prompt_tokens", 0)),
                          int(usage.get("completion_tokens", 0)))

    async def complete(self, system: str, prompt: str, choices: Sequence[str]) -> Completion:
        return await asyncio.to_thread(self._run, system, prompt, tuple(choices))

    async def warm(self) -> None:
        def load() -> None:
            with self._lock:
                self._load()

        await asyncio.to_thread(load)

    async def close(self) -> None:
        def release() -> None:
            with self._lock:
                llama, self._llama = self._llama, None
                self._grammars.clear()
                if llama is not None and hasattr(llama, "close"):
                    llama.close()

        await asyncio.to_thread(release)


# ---------------------------------------------------------------------------- HTTP


class _HttpBackend(Backend):
    def __init__(self, url: str, model: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self._session: Any = None

    @property
    def settings(self) -> tuple[Any, ...]:
        return (self.kind, self.url, self.model, self.timeout)

    async def _post(self, path: str, body: dict[str, Any],
                    headers: dict[str, str] | None = None) -> dict[str, Any]:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
        try:
            async with self._session.post(self.url + path, json=body,
                                          headers=headers or {}) as response:
                text = await response.text()
                if response.status != 200:
                    raise BackendError(f"{self.kind} answered HTTP {response.status}: "
                                       f"{text[:200]}")
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendError(f"cannot reach {self.kind} at {self.url}: {exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BackendError(f"{self.kind} answered something that is not JSON") from exc
        if not isinstance(data, dict):
            raise BackendError(f"{self.kind} answered something that is not a JSON object")
        return data

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class OllamaBackend(_HttpBackend):
    """ollama's ``/api/generate`` with a JSON-schema ``format``."""

    kind = "ollama"

    def __init__(self, url: str, model: str, *, temperature: float = 0.1,
                 max_tokens: int = 128, num_ctx: int = 2048, timeout: float = 30.0) -> None:
        super().__init__(url, model, timeout)
        self.options = {"temperature": temperature, "num_predict": max_tokens,
                        "num_ctx": num_ctx}

    @property
    def settings(self) -> tuple[Any, ...]:
        return (*super().settings, tuple(sorted(self.options.items())))

    async def complete(self, system: str, prompt: str, choices: Sequence[str]) -> Completion:
        data = await self._post("/api/generate", {
            "model": self.model, "system": system, "prompt": prompt, "stream": False,
            "format": verdict_schema(choices), "options": self.options,
        })
        text = data.get("response")
        if not isinstance(text, str):
            raise BackendError("ollama's answer has no response text")
        return Completion(text, _count(data.get("prompt_eval_count")),
                          _count(data.get("eval_count")))


class CostBudget:
    """What a metered backend spent today (UTC, by the injected clock)."""

    def __init__(self, daily: float, per_1m_input: float, per_1m_output: float,
                 clock: Callable[[], float]) -> None:
        self.daily = daily
        self.per_1m_input = per_1m_input
        self.per_1m_output = per_1m_output
        self.clock = clock
        self._day = self._today()
        self._spent = 0.0

    def _today(self) -> int:
        return int(self.clock() // 86400)

    @property
    def spent(self) -> float:
        if self._today() != self._day:
            self._day, self._spent = self._today(), 0.0
        return self._spent

    def exhausted(self) -> bool:
        return self.daily > 0 and self.spent >= self.daily

    def add(self, prompt_tokens: int, completion_tokens: int) -> float:
        cost = (prompt_tokens * self.per_1m_input + completion_tokens * self.per_1m_output) / 1e6
        self._spent = self.spent + cost
        return cost


class OpenAIBackend(_HttpBackend):
    """Any OpenAI-compatible ``/chat/completions`` API, with a daily cost budget."""

    kind = "openai"

    def __init__(self, url: str, model: str, *, api_key: str = "", temperature: float = 0.1,
                 max_tokens: int = 128, timeout: float = 20.0,
                 budget: CostBudget | None = None) -> None:
        super().__init__(url, model, timeout)
        self.api_key = api_key
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.budget = budget or CostBudget(0.0, 0.0, 0.0, time.time)

    @property
    def settings(self) -> tuple[Any, ...]:
        b = self.budget
        return (*super().settings, self.api_key, self.temperature, self.max_tokens, b.daily,
                b.per_1m_input, b.per_1m_output)

    def refuses(self) -> str | None:
        if self.budget.exhausted():
            return f"daily cost budget spent ({self.budget.spent:.4f} of {self.budget.daily:g})"
        return None

    def spend(self, completion: Completion) -> float:
        return self.budget.add(completion.prompt_tokens, completion.completion_tokens)

    async def complete(self, system: str, prompt: str, choices: Sequence[str]) -> Completion:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        data = await self._post("/chat/completions", {
            "model": self.model,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": prompt}],
            "temperature": self.temperature, "max_tokens": self.max_tokens,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "verdict", "strict": True, "schema": verdict_schema(choices)}},
        }, headers)
        try:
            text = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise BackendError("the chat completion has no message content") from exc
        if not isinstance(text, str):
            raise BackendError("the chat completion's content is not text")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        assert isinstance(usage, dict)
        return Completion(text, _count(usage.get("prompt_tokens")),
                          _count(usage.get("completion_tokens")))


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


# ---------------------------------------------------------------------------- building


def build_backend(
    kind: str,
    config: ThrallConfig,
    *,
    base_dir: Path,
    model: str = "",
    clock: Callable[[], float] = time.time,
) -> Backend | None:
    """The backend ``kind`` as ``config`` describes it (``model`` overrides its model);
    ``None`` for ``"none"``."""
    if kind == "local":
        c = config.local
        path = Path(model or c.model_path).expanduser()
        return LocalBackend(path if path.is_absolute() else base_dir / path,
                            n_threads=c.n_threads, n_ctx=c.n_ctx, max_tokens=c.max_tokens,
                            timeout=c.timeout)
    if kind == "ollama":
        o = config.ollama
        return OllamaBackend(o.url, model or o.model, temperature=o.temperature,
                             max_tokens=o.max_tokens, num_ctx=o.num_ctx, timeout=o.timeout)
    if kind == "openai":
        a = config.openai
        key = a.api_key or os.environ.get(a.api_key_env, "")
        budget = CostBudget(a.cost_budget_daily, a.cost_per_1m_input, a.cost_per_1m_output,
                            clock)
        return OpenAIBackend(a.url, model or a.model, api_key=key, temperature=a.temperature,
                             max_tokens=a.max_tokens, timeout=a.timeout, budget=budget)
    return None
