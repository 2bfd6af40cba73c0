"""Thrall: hotwire evaluation, events through the engine, mail between nodes, the local model.

Measured, with the bundled recipes loaded:

* **hotwire evaluation**: one event → envelope → the recipes it triggers → filter and
  rules (the pure core: :meth:`Pipeline.matching` and :meth:`Pipeline.decide`), per event,
  p50 / p99, and events per second through it;
* **through the engine**: events emitted on ``node.events`` of a node with a file
  database, through the engine's queue, gather, actions and firing records in SQLite
  (what a running node does), in events per second;
* **mail round trip** between two nodes on loopback: ``send_mail`` to the sender seeing
  the recipient's acknowledgement (``mail.delivered``), and to the recipient's
  ``mail.received``, sequentially, p50 / p99;
* **local backend** latency on a tiny random GGUF model generated here (llama.cpp with the
  verdict grammar), cold (first call) and warm p50 / p99; skipped without the ``llm``
  extra.

The event mix is what a busy node emits: mail of several types, task receipts (some
failed), peer churn, unmet demand, inbound settlements, watchman events.

    .venv/bin/python benchmarks/thrall.py [--events 200000] [--engine-events 20000]
                                          [--mails 200] [--llm-runs 20] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from knarr.config import ThrallConfig, ThrallTrustTiers  # noqa: E402
from knarr.node.node import Node  # noqa: E402
from knarr.recipes.engine import BUNDLED, Thrall  # noqa: E402
from knarr.recipes.pipeline import Pipeline, event_envelope  # noqa: E402
from knarr.recipes.prompts import load_prompts  # noqa: E402
from knarr.recipes.recipe import load_recipes  # noqa: E402

TARGETS = {"hotwire_p99_us": 100.0, "hotwire_events_per_s": 20_000.0, "mail_rtt_ms": 10.0}


def peer(i: int) -> str:
    return f"{i:064x}"


def event_mix(n: int) -> list[tuple[str, dict[str, Any]]]:
    """``n`` events cycling through what a busy node emits, from 50 peers."""
    kinds: list[Callable[[int], tuple[str, dict[str, Any]]]] = [
        lambda i: ("mail.received", {"id": f"{i:032x}", "sender": peer(i % 50),
                                     "type": "delivery", "body": f"delivered file {i}"}),
        lambda i: ("mail.received", {"id": f"{i:032x}", "sender": peer(i % 50),
                                     "type": "status", "body": "all good, 0 errors"}),
        lambda i: ("task.provided", {"requester": peer(i % 50), "skill": "ocr",
                                     "outcome": "completed", "charged": 1.0}),
        lambda i: ("task.consumed", {"provider": peer(i % 50), "skill": "translate",
                                     "outcome": "failed" if i % 7 == 0 else "completed"}),
        lambda i: ("peer.added", {"node_id": peer(i % 50), "host": "127.0.0.1",
                                  "port": 9000 + i % 50, "bucket": 200}),
        lambda i: ("demand", {"kind": "skill", "name": f"skill-{i % 20}"}),
        lambda i: ("settlement.inbound", {"peer": peer(i % 50), "id": f"{i:032x}",
                                          "amount": 2.5, "ok": True, "why": "",
                                          "delegated": True, "direction": "in"}),
        lambda i: ("watchman", {"event": "WATCHMAN_HEALTH_FAIL", "consecutive": 1}),
        lambda i: ("skill.discovered", {"name": "ocr", "provider": peer(i % 50)}),
    ]
    return [kinds[i % len(kinds)](i) for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[index]


def bundled_pipeline(clock: Callable[[], float]) -> Pipeline:
    prompts, _ = load_prompts([BUNDLED / "prompts"])
    result = load_recipes([BUNDLED], prompts=prompts)
    assert not result.errors, result.errors
    return Pipeline(result.recipes, ThrallTrustTiers(team=(peer(1)[:16],)), clock)


def bench_hotwire(n: int) -> dict[str, Any]:
    """The pure core, per event: envelope, matching recipes, filter, rules."""
    now = [1_700_000_000.0]
    pipeline = bundled_pipeline(lambda: now[0])
    events = event_mix(n)
    samples: list[float] = []
    decisions = matched = 0
    perf = time.perf_counter_ns
    gc.disable()
    try:
        started = perf()
        for name, data in events:
            t0 = perf()
            env = event_envelope(name, data, now[0])
            for recipe in pipeline.matching(env):
                matched += 1
                if pipeline.decide(recipe, env).action is not None:
                    decisions += 1
            samples.append((perf() - t0) / 1000)
            now[0] += 0.001
        total_s = (perf() - started) / 1e9
    finally:
        gc.enable()
    return {
        "events": n, "recipes": len(pipeline.recipes), "recipe_matches": matched,
        "decisions": decisions, "p50_us": percentile(samples, 50),
        "p99_us": percentile(samples, 99), "max_us": max(samples),
        "events_per_s": n / total_s,
    }


async def bench_engine(n: int, folder: Path) -> dict[str, Any]:
    """Events through ``node.events``, the engine's queue, gather, actions and records."""
    node = Node("127.0.0.1", 0, storage=folder / "engine.db")
    thrall = Thrall(node, ThrallConfig(enabled=True), base_dir=folder,
                    credit_limit_for=lambda _: 1000.0, queue_size=n + 10)
    await thrall.start()
    events = event_mix(n)
    before = len(node.journal("recipe", limit=10**9))
    started = time.perf_counter()
    for name, data in events:
        node.events.emit(name, **data)
    await thrall.idle()
    elapsed = time.perf_counter() - started
    recorded = len(node.journal("recipe", limit=10**9)) - before
    stats = dict(thrall.stats)
    await thrall.stop()
    await node.stop()
    return {"events": n, "seconds": elapsed, "events_per_s": n / elapsed,
            "firings": stats["fired"], "recorded": recorded, "skipped": stats["skipped"],
            "dropped": stats["dropped_events"]}


async def bench_mail(n: int) -> dict[str, Any]:
    """``send_mail`` → acknowledged (round trip) and → received (one way)."""
    alice = Node("127.0.0.1", 0)
    bob = Node("127.0.0.1", 0)
    await alice.start()
    await bob.start()
    await bob.join([f"127.0.0.1:{alice.port}"])
    delivered: dict[str, asyncio.Future[float]] = {}
    received: dict[str, asyncio.Future[float]] = {}
    loop = asyncio.get_running_loop()

    def on_alice(event: Any) -> None:
        if event.type == "mail.delivered" and event.data["id"] in delivered:
            delivered[event.data["id"]].set_result(time.perf_counter())

    def on_bob(event: Any) -> None:
        if event.type == "mail.received" and event.data["id"] in received:
            received[event.data["id"]].set_result(time.perf_counter())

    alice.events.listen(on_alice)
    bob.events.listen(on_bob)
    rtt: list[float] = []
    one_way: list[float] = []
    for i in range(n + 5):
        started = time.perf_counter()
        mail_id = alice.send_mail(bob.node_id, f"benchmark {i}")
        delivered[mail_id] = loop.create_future()
        received[mail_id] = loop.create_future()
        done = await asyncio.wait_for(delivered[mail_id], 10)
        got = await asyncio.wait_for(received[mail_id], 10)
        if i >= 5:  # the first ones also find bob and learn his key
            rtt.append((done - started) * 1000)
            one_way.append((got - started) * 1000)
    await alice.stop()
    await bob.stop()
    return {"mails": n, "rtt_p50_ms": percentile(rtt, 50), "rtt_p99_ms": percentile(rtt, 99),
            "one_way_p50_ms": percentile(one_way, 50),
            "one_way_p99_ms": percentile(one_way, 99)}


async def bench_local(n: int, folder: Path) -> dict[str, Any]:
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"needs the llm extra ({exc.name})"}
    from knarr.recipes.backends import LocalBackend, parse_verdict, system_prompt
    from tests.recipes.tiny_model import write_tiny_model

    model = write_tiny_model(folder / "tiny.gguf")
    backend = LocalBackend(model, n_threads=1, n_ctx=512, max_tokens=48)
    choices = ("drop", "compile", "wake")
    system = system_prompt(choices)
    samples: list[float] = []
    cold = 0.0
    for i in range(n + 1):
        started = time.perf_counter()
        completion = await backend.complete(system, f"Mail {i}: is the relay up?", choices)
        parse_verdict(completion.text, choices)
        elapsed = (time.perf_counter() - started) * 1000
        if i == 0:
            cold = elapsed
        else:
            samples.append(elapsed)
    await backend.close()
    return {"runs": n, "model_bytes": model.stat().st_size, "cold_ms": cold,
            "p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99)}


def rows(result: dict[str, Any], command: str) -> list[str]:
    h, e, m, llm = result["hotwire"], result["engine"], result["mail"], result["local"]
    out = [
        ("hotwire, bundled recipes", "evaluation p50 (µs)", f"{h['p50_us']:.1f}"),
        ("hotwire, bundled recipes", "evaluation p99 (µs; target < 100)", f"{h['p99_us']:.1f}"),
        ("hotwire, bundled recipes", "events/s (target ≥ 20,000)",
         f"{h['events_per_s']:,.0f}"),
        ("engine, node.events → records in SQLite", "events/s", f"{e['events_per_s']:,.0f}"),
        ("mail, 2 nodes on loopback", "round trip p50 (ms; target < 10)",
         f"{m['rtt_p50_ms']:.2f}"),
        ("mail, 2 nodes on loopback", "round trip p99 (ms)", f"{m['rtt_p99_ms']:.2f}"),
        ("mail, 2 nodes on loopback", "delivery (one way) p50 (ms)",
         f"{m['one_way_p50_ms']:.2f}"),
    ]
    if "skipped" not in llm:
        out += [
            ("local backend, tiny GGUF", "verdict p50 (ms)", f"{llm['p50_ms']:.1f}"),
            ("local backend, tiny GGUF", "verdict p99 (ms)", f"{llm['p99_ms']:.1f}"),
            ("local backend, tiny GGUF", "first verdict, cold (ms)", f"{llm['cold_ms']:.1f}"),
        ]
    return [f"| thrall | {case} | {metric} | {value} |  |  | `{command}` |"
            for case, metric, value in out]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="knarr-thrall-bench-") as temp:
        folder = Path(temp)
        result = {
            "hotwire": bench_hotwire(args.events),
            "engine": await bench_engine(args.engine_events, folder),
            "mail": await bench_mail(args.mails),
            "local": await bench_local(args.llm_runs, folder),
        }
    result["machine"] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "load_average": os.getloadavg(),
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--engine-events", type=int, default=20_000)
    parser.add_argument("--mails", type=int, default=200)
    parser.add_argument("--llm-runs", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print raw JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    result = asyncio.run(run(args))
    command = ".venv/bin/python " + " ".join(["benchmarks/thrall.py", *sys.argv[1:]])
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    h, e, m, llm = result["hotwire"], result["engine"], result["mail"], result["local"]
    print(f"load average {result['machine']['load_average']}, {result['machine']['cpus']} CPUs")
    print(f"hotwire ({h['recipes']} bundled recipes, {h['events']} events, "
          f"{h['recipe_matches']} recipe matches): p50 {h['p50_us']:.1f} µs, "
          f"p99 {h['p99_us']:.1f} µs, max {h['max_us']:.0f} µs, "
          f"{h['events_per_s']:,.0f} events/s")
    print(f"engine ({e['events']} events): {e['events_per_s']:,.0f} events/s, "
          f"{e['firings']} firings, {e['recorded']} recorded, {e['skipped']} skipped "
          f"by cooldowns, {e['dropped']} dropped")
    print(f"mail ({m['mails']} sequential): round trip p50 {m['rtt_p50_ms']:.2f} ms, "
          f"p99 {m['rtt_p99_ms']:.2f} ms; delivery p50 {m['one_way_p50_ms']:.2f} ms")
    if "skipped" in llm:
        print(f"local backend: skipped, {llm['skipped']}")
    else:
        print(f"local backend ({llm['model_bytes']} byte model, {llm['runs']} runs): "
              f"p50 {llm['p50_ms']:.1f} ms, p99 {llm['p99_ms']:.1f} ms, cold "
              f"{llm['cold_ms']:.1f} ms")
    print()
    print("\n".join(rows(result, command)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
