"""The local backend: llama-cpp-python running a tiny GGUF model that the test writes
with the ``gguf`` package. Its weights are random, so every valid answer here is the
grammar's doing. (llama-cpp-python builds from source; CI installs the ``llm`` extra.)"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from pathlib import Path
from typing import Any

import pytest

from knarr.config import ThrallConfig, ThrallLocalConfig
from knarr.recipes.backends import LocalBackend, parse_verdict, system_prompt
from knarr.recipes.cascade import Evaluator
from knarr.recipes.pipeline import mail_envelope
from knarr.recipes.prompts import Prompt
from tests.recipes.conftest import PEER, ThrallFactory, recipe, write
from tests.recipes.tiny_model import write_tiny_model

MISSING = [m for m in ("llama_cpp", "gguf", "numpy") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"needs {', '.join(MISSING)}: pip install 'knarr[llm]' (llama-cpp-python "
        "builds from source, a few minutes)",
    ),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.fixture
async def backend(model: Path) -> Any:
    b = LocalBackend(model, n_threads=1, n_ctx=512, max_tokens=48, timeout=30)
    yield b
    await b.close()


@pytest.mark.parametrize("choices", [("drop", "compile", "wake"), ("drop", "escalate"),
                                     ("reply-now", "ignore_it")])
async def test_the_grammar_makes_a_random_model_answer_validly(
    backend: LocalBackend, choices: tuple[str, ...]
) -> None:
    completion = await backend.complete(system_prompt(choices), "Mail: server down", choices)
    action, _ = parse_verdict(completion.text, choices)
    assert action in choices
    assert completion.text.startswith('{"action": "')
    assert completion.completion_tokens > 0


async def test_the_model_is_loaded_once_and_runs_off_the_event_loop(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await backend.warm()
    llama = backend._llama
    assert llama is not None
    gate = threading.Event()
    seen: dict[str, Any] = {}
    run = backend._run

    def gated(*args: Any) -> Any:
        seen["thread"] = threading.current_thread()
        seen["opened"] = gate.wait(10)  # only the event loop can open it
        return run(*args)

    monkeypatch.setattr(backend, "_run", gated)
    task = asyncio.create_task(backend.complete(system_prompt(["a", "b"]), "x", ["a", "b"]))
    while "thread" not in seen:
        await asyncio.sleep(0.001)
    gate.set()
    await task
    assert seen["opened"] is True and seen["thread"] is not threading.main_thread()
    assert backend._llama is llama


async def test_a_missing_model_file_takes_the_fallback(tmp_path: Path) -> None:
    r = recipe('[trigger]\ntype = "on_mail"\n[evaluate]\ntype = "llm"\nprompt = "p"\n'
               'fallback_action = "compile"\n', prompts=("p",))
    evaluator = Evaluator({"p": Prompt("p", "{{body_text}}")},
                          l2=LocalBackend(tmp_path / "none.gguf"))
    verdict = await evaluator.evaluate(r, mail_envelope(PEER, "text", "x"), "unknown")
    assert verdict.fallback and verdict.action == "compile"
    assert verdict.reason == f"no model file at {tmp_path / 'none.gguf'} ([thrall.local] " \
        "model_path)"


async def test_a_timeout_falls_back_and_the_next_request_waits_for_the_thread(
    model: Path,
) -> None:
    r = recipe('[trigger]\ntype = "on_mail"\n[evaluate]\ntype = "llm"\nprompt = "p"\n'
               'fallback_action = "log"\n[actions.wake]\n', prompts=("p",))
    slow = LocalBackend(model, n_threads=1, n_ctx=512, max_tokens=48, timeout=0.001)
    evaluator = Evaluator({"p": Prompt("p", "{{body_text}}")}, l2=slow, queue_timeout=30)
    env = mail_envelope(PEER, "text", "x")
    first = await evaluator.evaluate(r, env, "unknown")
    assert first.fallback and first.reason == "no answer within 0.001 s"
    slow.timeout = 30  # the abandoned inference still holds the model
    second = await evaluator.evaluate(r, env, "unknown")
    assert not second.fallback and second.action in ("log", "wake")
    await slow.close()


async def test_thrall_with_the_local_backend(
    model: Path, make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    write(tmp_path / "recipes", "triage.toml", """
        [trigger]
        type = "on_mail"
        [evaluate]
        type = "llm"
        prompt = "triage"
        actions = ["drop", "compile", "wake"]
        fallback_action = "log"
    """)
    write(tmp_path / "recipes" / "prompts", "triage.toml", 'content = "{{body_text}}"\n')
    config = ThrallConfig(enabled=True, bundled=False, backend="local",
                          local=ThrallLocalConfig(model_path=str(model), n_threads=1,
                                                  n_ctx=512, max_tokens=48))
    thrall = await make_thrall(config=config)
    thrall.node.events.emit("mail.received", id="0" * 32, sender=PEER, type="text",
                            body="is the relay up?")
    await thrall.idle()
    [firing] = [j for j in thrall.node.journal("recipe") if j["event"] == "fired"]
    assert firing["evaluation"] == "llm" and firing["backend"] == "local:tiny.gguf"
    assert firing["verdict"] in ("drop", "compile", "wake")
