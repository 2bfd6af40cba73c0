"""LLM evaluation: the openai backend against an aiohttp app speaking the chat
completions API and the ollama backend against one speaking ``/api/generate``, both on
loopback; the cascade; failure, timeout, a full queue, the cost budget and fallback; and
swapping backends on a config reload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from knarr.config import (
    ThrallCascadeConfig,
    ThrallConfig,
    ThrallOllamaConfig,
    ThrallOpenAIConfig,
)
from knarr.recipes.backends import (
    BackendError,
    CostBudget,
    OllamaBackend,
    OpenAIBackend,
    parse_verdict,
    verdict_grammar,
    verdict_schema,
)
from knarr.recipes.cascade import Evaluator
from knarr.recipes.engine import Thrall
from knarr.recipes.pipeline import mail_envelope
from knarr.recipes.prompts import Prompt
from tests.recipes.conftest import PEER, Clock, ThrallFactory, recipe, write

Answer = Callable[[str, list[str]], dict[str, Any] | str]


def by_keyword(prompt: str, choices: list[str]) -> dict[str, Any]:
    """A stand-in model: urgent things wake, thanks are dropped, the rest compiled."""
    text = prompt.lower()
    if "thanks" in text and "drop" in choices:
        return {"action": "drop", "reason": "acknowledgement"}
    if "urgent" in text:
        want = "wake" if "wake" in choices else "escalate"
        return {"action": want, "reason": "urgent"}
    return {"action": choices[-1] if "escalate" in choices else "compile", "reason": "routine"}


@dataclass
class FakeLLM:
    """An aiohttp app on loopback speaking both APIs."""

    answer: Answer = by_keyword
    status: int = 200
    delay: asyncio.Event | None = None
    usage: tuple[int, int] = (100, 20)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    port: int = 0

    def _reply(self, prompt: str, choices: list[str]) -> str:
        answer = self.answer(prompt, choices)
        return answer if isinstance(answer, str) else json.dumps(answer)

    async def _common(self, request: web.Request) -> dict[str, Any] | web.Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.delay is not None:
            await self.delay.wait()
        if self.status != 200:
            return web.Response(status=self.status, text="model exploded")
        assert isinstance(body, dict)
        return body

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._common(request)
        if isinstance(body, web.Response):
            return body
        schema = body["response_format"]["json_schema"]["schema"]
        choices = schema["properties"]["action"]["enum"]
        prompt = body["messages"][-1]["content"]
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": self._reply(prompt, choices)}}],
            "usage": {"prompt_tokens": self.usage[0], "completion_tokens": self.usage[1]},
        })

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await self._common(request)
        if isinstance(body, web.Response):
            return body
        choices = body["format"]["properties"]["action"]["enum"]
        return web.json_response({
            "model": body["model"], "response": self._reply(body["prompt"], choices),
            "done": True, "prompt_eval_count": 12, "eval_count": 7,
        })


@pytest.fixture
async def llm() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []
    fakes: list[FakeLLM] = []

    async def start(**kwargs: Any) -> FakeLLM:
        fake = FakeLLM(**kwargs)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", fake.chat)
        app.router.add_post("/api/generate", fake.generate)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        fake.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        runners.append(runner)
        fakes.append(fake)
        return fake

    yield start
    for fake in fakes:
        if fake.delay is not None:
            fake.delay.set()
    for runner in runners:
        await runner.cleanup()


def openai(fake: FakeLLM, **kw: Any) -> ThrallOpenAIConfig:
    kw = {"model": "tiny-gpt", "api_key": "sk-test", **kw}
    return ThrallOpenAIConfig(url=f"http://127.0.0.1:{fake.port}/v1", **kw)


def ollama(fake: FakeLLM, **kw: Any) -> ThrallOllamaConfig:
    kw = {"model": "gemma3:1b", **kw}
    return ThrallOllamaConfig(url=f"http://127.0.0.1:{fake.port}", **kw)


TRIAGE = """
[trigger]
type = "on_mail"

[filter]
cache_ttl = {cache_ttl}

[evaluate]
type = "llm"
prompt = "mine"
actions = ["drop", "compile", "wake"]
fallback_action = "compile"

[actions.compile]
buffer = "later"
"""


def setup_recipes(tmp_path: Path, cache_ttl: int = 0) -> None:
    folder = tmp_path / "recipes"
    write(folder, "triage.toml", TRIAGE.format(cache_ttl=cache_ttl))
    write(folder / "prompts", "mine.toml",
          'system = "You sort mail."\ncontent = "From a {{filter.tier}} node: {{body_text}}'
          '{{cascade.reason}}"\n')
    write(folder / "prompts", "l1.toml", 'content = "Noise? {{body_text}}"\n')


async def mail(thrall: Thrall, body: str, sender: str = PEER) -> dict[str, Any]:
    node = thrall.node
    node.events.emit("mail.received", id=f"{node.events.last_seq:032x}", sender=sender,
                     type="text", body=body)
    await thrall.idle()
    rows = [j for j in node.journal("recipe") if j["event"] == "fired"]
    return rows[0]


# ------------------------------------------------------------------------ verdicts


def test_the_schema_and_grammar_admit_only_the_choices() -> None:
    schema = verdict_schema(["drop", "wake"])
    assert schema["properties"]["action"]["enum"] == ["drop", "wake"]
    assert schema["required"] == ["action", "reason"]
    grammar = verdict_grammar(["drop", "wake"])
    assert 'action ::= "drop" | "wake"' in grammar
    assert grammar.startswith('root ::= "{\\"action\\": \\"" action')


@pytest.mark.parametrize(("text", "expected"), [
    ('{"action": "wake", "reason": "x"}', ("wake", "x")),
    ('```json\n{"action": "drop", "reason": ""}\n```', ("drop", "")),
    ('{"action": "wake", "reason": "cut off mid-sen', ("wake", "cut off mid-sen")),
])
def test_parse_verdict(text: str, expected: tuple[str, str]) -> None:
    assert parse_verdict(text, ["drop", "wake"]) == expected


@pytest.mark.parametrize(("text", "why"), [
    ('{"action": "explode"}', "the model chose 'explode', not one of drop, wake"),
    ("I think you should wake up", "the model's answer has no action"),
    ('["wake"]', "the model's answer has no action"),
])
def test_parse_verdict_refuses(text: str, why: str) -> None:
    with pytest.raises(BackendError, match=why):
        parse_verdict(text, ["drop", "wake"])


# ------------------------------------------------------------------------ openai / ollama


async def test_openai_backend_end_to_end(
    llm: Callable[..., Any], make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    fake = await llm()
    setup_recipes(tmp_path)
    config = ThrallConfig(enabled=True, bundled=False, backend="openai", openai=openai(fake))
    thrall = await make_thrall(config=config)
    firing = await mail(thrall, "URGENT: the relay is down")
    assert (firing["evaluation"], firing["verdict"], firing["action"]) == ("llm", "wake", "wake")
    assert firing["backend"] == "openai:tiny-gpt"
    assert firing["path"][-2] == "l2 openai:tiny-gpt: wake (urgent)"
    assert firing["cost"] == pytest.approx((100 * 0.15 + 20 * 0.60) / 1e6)
    [body] = fake.requests
    assert body["model"] == "tiny-gpt" and body["temperature"] == 0.1
    assert body["response_format"]["json_schema"]["schema"] == verdict_schema(
        ["drop", "compile", "wake"])
    system, user = body["messages"]
    assert system["role"] == "system" and system["content"].startswith("You sort mail.\n")
    assert user["content"] == "From a unknown node: URGENT: the relay is down"
    assert fake.headers[0]["Authorization"] == "Bearer sk-test"
    firing = await mail(thrall, "weekly numbers attached")
    assert firing["action"] == "compile" and firing["detail"].startswith("added to digest")


async def test_ollama_backend_end_to_end(
    llm: Callable[..., Any], make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    fake = await llm()
    setup_recipes(tmp_path)
    config = ThrallConfig(enabled=True, bundled=False, backend="ollama",
                          ollama=ollama(fake, num_ctx=512))
    thrall = await make_thrall(config=config)
    firing = await mail(thrall, "thanks!")
    assert (firing["evaluation"], firing["action"], firing["backend"]) == (
        "llm", "drop", "ollama:gemma3:1b")
    [body] = fake.requests
    assert body["stream"] is False and body["model"] == "gemma3:1b"
    assert body["format"] == verdict_schema(["drop", "compile", "wake"])
    assert body["options"] == {"temperature": 0.1, "num_predict": 128, "num_ctx": 512}
    assert body["prompt"] == "From a unknown node: thanks!"
    assert body["system"].startswith("You sort mail.\nAnswer with exactly one JSON object")


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"status": 500}, "openai answered HTTP 500: model exploded"),
    ({"answer": lambda p, c: {"action": "reboot", "reason": ""}},
     "the model chose 'reboot', not one of drop, compile, wake"),
    ({"answer": lambda p, c: "<html>oops</html>"},
     "the model's answer has no action: '<html>oops</html>'"),
])
async def test_backend_failures_take_the_fallback(
    llm: Callable[..., Any], make_thrall: ThrallFactory, tmp_path: Path,
    kwargs: dict[str, Any], why: str,
) -> None:
    fake = await llm(**kwargs)
    setup_recipes(tmp_path)
    config = ThrallConfig(enabled=True, bundled=False, backend="openai", openai=openai(fake))
    thrall = await make_thrall(config=config)
    firing = await mail(thrall, "URGENT")
    assert (firing["evaluation"], firing["verdict"]) == ("fallback", "compile")
    assert firing["path"][-2] == f"fallback compile: {why}"
    assert firing["ok"] is True  # the fallback action itself worked


async def test_an_unreachable_backend_takes_the_fallback(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    setup_recipes(tmp_path)
    config = ThrallConfig(enabled=True, bundled=False, backend="ollama",
                          ollama=ThrallOllamaConfig(url="http://127.0.0.1:9", timeout=2))
    thrall = await make_thrall(config=config)
    firing = await mail(thrall, "hello")
    assert firing["evaluation"] == "fallback"
    assert "cannot reach ollama at http://127.0.0.1:9" in firing["path"][-2]


async def test_no_backend_takes_the_fallback(make_thrall: ThrallFactory, tmp_path: Path) -> None:
    setup_recipes(tmp_path)
    thrall = await make_thrall()
    firing = await mail(thrall, "hello")
    assert firing["path"][-2] == "fallback compile: no LLM backend configured ([thrall] backend)"


async def test_a_slow_backend_times_out_into_the_fallback(
    llm: Callable[..., Any], make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    fake = await llm(delay=asyncio.Event())
    setup_recipes(tmp_path)
    config = ThrallConfig(enabled=True, bundled=False, backend="ollama",
                          ollama=ollama(fake, timeout=0.2))
    thrall = await make_thrall(config=config)
    firing = await mail(thrall, "URGENT")
    assert firing["path"][-2] == "fallback compile: no answer within 0.2 s"
    assert firing["latency_ms"] >= 200


async def test_a_full_queue_takes_the_fallback_at_once(llm: Callable[..., Any]) -> None:
    fake = await llm(delay=asyncio.Event())
    r = recipe(TRIAGE.format(cache_ttl=0), prompts=("mine",))
    backend = OllamaBackend(f"http://127.0.0.1:{fake.port}", "m", timeout=30)
    evaluator = Evaluator({"mine": Prompt("mine", "{{body_text}}")}, l2=backend,
                          queue_timeout=0.3, max_queue=1)
    env = mail_envelope(PEER, "text", "x")
    first = asyncio.create_task(evaluator.evaluate(r, env, "unknown"))
    while not fake.requests:
        await asyncio.sleep(0.01)
    second = asyncio.create_task(evaluator.evaluate(r, env, "unknown"))
    await asyncio.sleep(0)
    assert evaluator.queue_depth == 1
    third = await evaluator.evaluate(r, env, "unknown")
    assert (third.action, third.fallback) == ("compile", True)
    assert third.path[-1] == "fallback compile: queue full (1 waiting)"
    second_verdict = await second
    assert second_verdict.path[-1] == "fallback compile: backend busy for 0.3 s (queue full)"
    assert fake.delay is not None
    fake.delay.set()
    first_verdict = await first
    assert (first_verdict.action, first_verdict.fallback) == ("compile", False)
    assert evaluator.counts == {"l1_drop": 0, "l1_escalate": 0, "l1_error": 0, "l2": 1,
                                "fallback": 2}
    await backend.close()


async def test_the_daily_cost_budget_falls_back_until_the_next_day(
    llm: Callable[..., Any], make_thrall: ThrallFactory, tmp_path: Path, clock: Clock
) -> None:
    fake = await llm(usage=(1_000_000, 0))  # one request costs 0.15
    setup_recipes(tmp_path)
    config = ThrallConfig(enabled=True, bundled=False, backend="openai",
                          openai=openai(fake, cost_budget_daily=0.1))
    thrall = await make_thrall(config=config, clock=clock)
    assert (await mail(thrall, "URGENT"))["evaluation"] == "llm"
    firing = await mail(thrall, "URGENT again")
    assert firing["path"][-2] == "fallback compile: daily cost budget spent (0.1500 of 0.1)"
    assert len(fake.requests) == 1
    clock.advance(86400)
    assert (await mail(thrall, "URGENT tomorrow"))["evaluation"] == "llm"


def test_cost_budget_arithmetic(clock: Clock) -> None:
    budget = CostBudget(1.0, 0.5, 2.0, clock)
    assert budget.add(1_000_000, 250_000) == pytest.approx(1.0)
    assert budget.exhausted()
    clock.advance(86400)
    assert budget.spent == 0.0 and not budget.exhausted()
    assert not CostBudget(0.0, 1.0, 1.0, clock).exhausted()  # 0 = unlimited


async def test_cached_verdicts_spare_the_backend(
    llm: Callable[..., Any], make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    fake = await llm()
    setup_recipes(tmp_path, cache_ttl=120)
    config = ThrallConfig(enabled=True, bundled=False, backend="openai", openai=openai(fake))
    thrall = await make_thrall(config=config)
    await mail(thrall, "URGENT")
    firing = await mail(thrall, "another one")
    assert (firing["evaluation"], firing["action"]) == ("cache", "wake")
    assert len(fake.requests) == 1


# ------------------------------------------------------------------------ cascade


def cascade_config(l1: FakeLLM, l2: FakeLLM) -> ThrallConfig:
    return ThrallConfig(
        enabled=True, bundled=False, backend="openai", openai=openai(l2),
        ollama=ollama(l1), cascade=ThrallCascadeConfig(enabled=True, l1_backend="ollama",
                                                       l1_model="tiny-l1", l1_prompt="l1"),
    )


async def test_l1_drops_noise_before_l2(
    llm: Callable[..., Any], make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    l1, l2 = await llm(), await llm()
    setup_recipes(tmp_path)
    thrall = await make_thrall(config=cascade_config(l1, l2))
    firing = await mail(thrall, "thanks")
    assert firing["action"] == "drop" and firing["backend"] == "ollama:tiny-l1"
    assert firing["path"][-2] == "l1 ollama:tiny-l1: drop (acknowledgement)"
    assert l2.requests == []
    assert l1.requests[0]["format"]["properties"]["action"]["enum"] == ["drop", "escalate"]
    assert l1.requests[0]["prompt"] == "Noise? thanks"


async def test_l1_escalates_to_l2_with_its_reason(
    llm: Callable[..., Any], make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    l1, l2 = await llm(), await llm()
    setup_recipes(tmp_path)
    thrall = await make_thrall(config=cascade_config(l1, l2))
    firing = await mail(thrall, "urgent: disk full")
    assert firing["action"] == "wake" and firing["backend"] == "openai:tiny-gpt"
    assert firing["path"][2:4] == ["l1 ollama:tiny-l1: escalate (urgent)",
                                   "l2 openai:tiny-gpt: wake (urgent)"]
    user = l2.requests[0]["messages"][-1]["content"]
    assert user.endswith("urgent: disk fullA fast filter escalated this: urgent")
    assert thrall.evaluator.counts["l1_escalate"] == 1


async def test_an_l1_failure_goes_on_to_l2(
    llm: Callable[..., Any], make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    l1, l2 = await llm(status=503), await llm()
    setup_recipes(tmp_path)
    thrall = await make_thrall(config=cascade_config(l1, l2))
    firing = await mail(thrall, "urgent")
    assert firing["action"] == "wake"
    assert firing["path"][2] == "l1 ollama:tiny-l1: ollama answered HTTP 503: model exploded; " \
        "on to L2"


async def test_a_recipe_can_opt_out_of_the_cascade(
    llm: Callable[..., Any], make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    l1, l2 = await llm(), await llm()
    setup_recipes(tmp_path)
    path = tmp_path / "recipes" / "triage.toml"
    path.write_text(path.read_text().replace('prompt = "mine"', 'prompt = "mine"\ncascade = false'))
    thrall = await make_thrall(config=cascade_config(l1, l2))
    assert (await mail(thrall, "thanks"))["backend"] == "openai:tiny-gpt"
    assert l1.requests == []


# ------------------------------------------------------------------------ hot swap


async def test_the_backend_hot_swaps_on_config_reload(
    llm: Callable[..., Any], make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    first, second = await llm(), await llm()
    setup_recipes(tmp_path)
    config = ThrallConfig(enabled=True, bundled=False, backend="openai", openai=openai(first),
                          ollama=ollama(second))
    current = [config]
    thrall = await make_thrall(config=config, reload_config=lambda: current[0])
    await mail(thrall, "one")
    old = thrall.evaluator.l2
    assert isinstance(old, OpenAIBackend)
    await thrall.reload()
    assert thrall.evaluator.l2 is old  # same settings: the same backend object
    current[0] = replace(config, backend="ollama")
    report = await thrall.reload()
    assert report.backends == "ollama:gemma3:1b"
    await thrall.idle()
    assert old._session is None  # the replaced backend was closed
    firing = await mail(thrall, "two")
    assert firing["backend"] == "ollama:gemma3:1b"
    assert len(first.requests) == 1 and len(second.requests) == 1
    current[0] = replace(config, backend="ollama", ollama=ollama(second, model="qwen3"))
    await thrall.reload()
    assert (await mail(thrall, "three"))["backend"] == "ollama:qwen3"
