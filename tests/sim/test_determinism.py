"""The same seed gives the same figures, whatever Python's hash seed and whichever
signatures the nodes make."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nacl.signing
import pytest

from knarr.node import identity as identity_module
from knarr.node.identity import Identity
from knarr.sim import SimConfig, simulate

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--nodes", "60", "--dead", "0.2", "--loss", "0.02", "--churn", "1.0",
        "--duration", "120", "--lookups", "40", "--join-period", "30", "--sybil", "20",
        "--reflect", "--json", "--quiet"]
MACHINE = {"wall_s", "cpu_s", "cpu_us_per_datagram", "peak_rss_mb"}


def _run(hash_seed: str, seed: int, *extra: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dht_sim.py"), *ARGS, "--seed", str(seed),
         *extra],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, check=True,
    )
    figures: dict[str, object] = json.loads(out.stdout)
    return {k: v for k, v in figures.items() if k not in MACHINE}


@pytest.mark.slow
def test_a_seed_gives_identical_output_across_hash_seeds() -> None:
    first = _run("1", seed=5)
    again = _run("2", seed=5)
    assert first == again
    assert first["lookups"] == 40 and first["datagrams"] > 0
    other = _run("1", seed=6)
    assert other != first  # the seed does matter


@pytest.mark.slow
def test_the_signature_stand_in_changes_no_figure() -> None:
    """The simulator signs with a same-size MAC instead of Ed25519 (for speed); with
    Ed25519, every figure is the same, forged and tampered records included."""
    stand_in = _run("1", 7, "--poison")
    ed25519 = _run("1", 7, "--poison", "--real-signatures")
    assert stand_in == ed25519
    assert stand_in["poison_stores"] and stand_in["poison_stores_accepted"] == {
        "expired": 0, "forged": 0, "replayed": 0, "tampered": 0}


def test_a_run_signs_with_the_stand_in_and_leaves_ed25519_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_signs: list[int] = []
    real = identity_module.nacl.bindings.crypto_sign

    def counting(message: bytes, secret: bytes) -> bytes:
        real_signs.append(len(message))
        return real(message, secret)

    monkeypatch.setattr(identity_module.nacl.bindings, "crypto_sign", counting)
    tiny = SimConfig(nodes=20, lookups=5, records=5, join_period=5.0, settle=2.0,
                     duration=5.0, seed=1)
    out = simulate(tiny)
    assert out["datagrams"] > 0 and real_signs == []  # every signature was the stand-in's
    simulate(replace(tiny, real_signatures=True))
    assert len(real_signs) > out["datagrams"] // 2  # Ed25519 when asked for
    alice = Identity.from_seed(bytes(32))  # after the run: Ed25519 again
    assert alice.sign(b"") == nacl.signing.SigningKey(bytes(32)).sign(b"").signature
