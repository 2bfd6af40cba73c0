"""The delegated settlement key: the certificate, the chain a peer checks, the daily
ceiling on both sides, forged and expired certificates, and revocation by deleting the
key file. Pure desks first, then real nodes with Thrall's settle action."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from knarr.config import ThrallConfig
from knarr.node.economy import InvalidReceipt, to_micro
from knarr.node.identity import Identity
from knarr.node.node import Node
from knarr.node.settlement import (
    DelegateCertificate,
    Delegation,
    SettlementDesk,
    SettlementRefused,
    SettleReply,
)
from knarr.recipes import delegate
from knarr.recipes.engine import Thrall
from tests.conftest import NodeFactory, sheet
from tests.node.test_ledger import MALLORY, PROVIDER, REQUESTER, _books, trade
from tests.recipes.conftest import Clock, ThrallFactory, write

KEY = Identity.from_seed(b"d" * 32)
NOW = 1_700_000_000.0


def certificate(issuer: Identity = REQUESTER, *, ceiling: float = 5.0,
                expires: float = NOW + 86400, scope: str = "settle") -> DelegateCertificate:
    return DelegateCertificate.issue(issuer, KEY.public_key, ceiling=to_micro(ceiling),
                                     expires=int(expires), scope=scope)


# ------------------------------------------------------------------------ the certificate


def test_a_certificate_round_trips_and_verifies() -> None:
    cert = certificate()
    parsed = DelegateCertificate.parse(cert.encode())
    assert parsed == cert
    parsed.authorise(REQUESTER.public_key, NOW)


@pytest.mark.parametrize(("raw", "why"), [
    (b"XX" + bytes(100), "not a delegate certificate"),
    (certificate().encode()[:-1] + b"\x00", "delegate certificate signature does not verify"),
    (certificate().encode().replace(to_micro(5).to_bytes(4, "big"),
                                    to_micro(500).to_bytes(4, "big")),
     "delegate certificate signature does not verify"),
])
def test_a_tampered_certificate_is_refused(raw: bytes, why: str) -> None:
    with pytest.raises(InvalidReceipt, match=why):
        DelegateCertificate.parse(raw)


def test_a_certificate_is_checked_against_issuer_scope_and_expiry() -> None:
    with pytest.raises(InvalidReceipt, match="issued by another node"):
        certificate(MALLORY).authorise(REQUESTER.public_key, NOW)
    with pytest.raises(InvalidReceipt, match="is for 'pay', not 'settle'"):
        certificate(scope="pay").authorise(REQUESTER.public_key, NOW)
    with pytest.raises(InvalidReceipt, match="has expired"):
        certificate(expires=NOW).authorise(REQUESTER.public_key, NOW)


# ------------------------------------------------------------------------ pure desks


class Desks:
    """The requester (who owes) settles with the provider through a delegate."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.provider, self.requester = _books(), _books()
        nonces = (bytes([n]) * 16 for n in itertools.count(1))
        self.provider_desk = SettlementDesk(PROVIDER, self.provider, lambda _: next(nonces),
                                            clock=clock)
        self.requester_desk = SettlementDesk(REQUESTER, self.requester,
                                             lambda _: next(nonces), clock=clock)

    def owe(self, credits: float) -> None:
        trade(self.provider, self.requester, PROVIDER, REQUESTER, credits)

    def settle(self, delegation: Delegation) -> SettleReply:
        proposal = self.requester_desk.propose(PROVIDER.node_id, delegation)
        assert proposal is not None
        reply = self.provider_desk.answer(REQUESTER.public_key, b"\x00" * 16, proposal)
        if reply.ok:
            self.requester_desk.conclude(proposal, reply, PROVIDER.public_key)
        return reply


def test_the_peer_enforces_the_daily_ceiling_and_it_resets_the_next_day() -> None:
    clock = Clock(NOW)
    desks = Desks(clock)
    delegation = Delegation(KEY, certificate(ceiling=5, expires=NOW + 10 * 86400))
    desks.owe(3)
    assert desks.settle(delegation).ok
    desks.owe(3)
    reply = desks.settle(delegation)
    assert not reply.ok
    assert reply.why == ("past the delegate's daily ceiling: 3 of 5 credits spent today, "
                         "this would add 3")
    clock.advance(86400)
    assert desks.settle(delegation).ok
    assert desks.provider.balance(REQUESTER.node_id_hex) == 0


def test_a_delegate_may_collect_past_the_ceiling() -> None:
    """The ceiling caps spending; settling what a peer owes us is not spending."""
    clock = Clock(NOW)
    desks = Desks(clock)
    trade(desks.requester, desks.provider, REQUESTER, PROVIDER, 50)  # provider owes 50
    assert desks.settle(Delegation(KEY, certificate(ceiling=1))).ok


def test_a_statement_signed_by_another_key_than_the_certified_one_is_refused() -> None:
    desks = Desks(Clock(NOW))
    desks.owe(1)
    with pytest.raises(InvalidReceipt, match="settlement signature does not verify"):
        desks.settle(Delegation(MALLORY, certificate()))


# ------------------------------------------------------------------------ real nodes


async def upper(data: dict[str, Any]) -> dict[str, Any]:
    return {"text": str(data["text"]).upper()}


async def owing(make_node: NodeFactory, credits: int) -> tuple[Node, Node]:
    """A requester that owes a provider ``credits``."""
    requester = await make_node()
    provider = await make_node()
    await provider.join([f"127.0.0.1:{requester.port}"])
    provider.register_handler("upper", upper)
    await provider.announce({**sheet("upper"), "price": 1})
    for _ in range(credits):
        await requester.request("upper", {"text": "x"})
    return requester, provider


def inbound(node: Node) -> list[dict[str, Any]]:
    return [e.data for e in node.events.since(0) or [] if e.type == "settlement.inbound"]


SETTLE = """
[trigger]
type = "on_tick"
interval = 60

[evaluate]
default_action = "settle"

[actions.settle]
threshold = 1.0
"""


async def settle_thrall(make_thrall: ThrallFactory, node: Node, tmp_path: Path,
                        clock: Clock) -> Thrall:
    write(tmp_path / "recipes", "pay.toml", SETTLE)
    return await make_thrall(node, clock=clock)


async def fire_settle(thrall: Thrall, clock: Clock) -> dict[str, Any]:
    clock.advance(60)
    [firing] = await thrall.tick()
    return firing.record()


@pytest.mark.slow
async def test_thrall_settles_with_the_delegate_key_and_the_peer_accepts(
    make_node: NodeFactory, make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    requester, provider = await owing(make_node, 3)
    clock = Clock(requester.clock())
    delegate.issue(tmp_path / "thrall_delegate.key", requester.identity, ceiling=10, days=1)
    assert (tmp_path / "thrall_delegate.key").stat().st_mode & 0o777 == 0o600
    thrall = await settle_thrall(make_thrall, requester, tmp_path, clock)
    firing = await fire_settle(thrall, clock)
    assert firing["ok"] is True and firing["action"] == "settle"
    assert firing["detail"] == f"{provider.node_id[:12]}: settled 3"
    assert firing["spent"] == 3 and firing["settled"] == 1
    issued = delegate.load(tmp_path / "thrall_delegate.key", requester.identity)
    assert issued is not None and firing["delegate"] == issued.key.public_key.hex()[:16]
    assert requester.ledger.balance(provider.node_id) == 0
    assert provider.ledger.balance(requester.node_id) == 0
    [seen] = inbound(provider)
    assert seen["delegated"] is True and seen["ok"] is True and seen["amount"] == 3.0
    assert seen["direction"] == "in" and seen["peer"] == requester.node_id


@pytest.mark.slow
async def test_thrall_refuses_past_its_ceiling_counting_todays_firings(
    make_node: NodeFactory, make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    requester, provider = await owing(make_node, 2)
    clock = Clock(requester.clock())
    delegate.issue(tmp_path / "thrall_delegate.key", requester.identity, ceiling=3, days=1)
    thrall = await settle_thrall(make_thrall, requester, tmp_path, clock)
    assert (await fire_settle(thrall, clock))["spent"] == 2
    for _ in range(2):
        await requester.request("upper", {"text": "x"})
    firing = await fire_settle(thrall, clock)
    assert firing["ok"] is False
    assert firing["detail"] == (f"{provider.node_id[:12]}: would pay 2, past the daily ceiling"
                                " (2 of 3 spent today)")
    assert len(inbound(provider)) == 1  # nothing was sent
    assert requester.ledger.balance(provider.node_id) == -to_micro(2)


@pytest.mark.slow
async def test_the_peer_refuses_a_delegate_past_the_ceiling(make_node: NodeFactory) -> None:
    requester, provider = await owing(make_node, 4)
    cert = DelegateCertificate.issue(requester.identity, KEY.public_key, ceiling=to_micro(3),
                                     expires=int(requester.clock() + 3600))
    with pytest.raises(SettlementRefused, match="past the delegate's daily ceiling: 0 of 3"):
        await requester.settle(provider.node_id, delegation=Delegation(KEY, cert))
    [seen] = inbound(provider)
    assert seen["ok"] is False and seen["delegated"] is True
    assert provider.ledger.settlements() == requester.ledger.settlements() == []


@pytest.mark.slow
@pytest.mark.parametrize(("forge", "why"), [
    ("other-issuer", "the delegate certificate was issued by another node"),
    ("bad-signature", "delegate certificate signature does not verify"),
    ("expired", "the delegate certificate has expired"),
    ("wrong-key", "settlement signature does not verify"),
])
async def test_the_peer_refuses_a_forged_or_expired_certificate(
    make_node: NodeFactory, forge: str, why: str
) -> None:
    requester, provider = await owing(make_node, 1)
    expires = int(requester.clock() + 3600)
    key = KEY
    if forge == "other-issuer":  # Mallory certifies a key and it is sent as the requester's
        cert = DelegateCertificate.issue(MALLORY, KEY.public_key, ceiling=to_micro(9),
                                         expires=expires)
    elif forge == "bad-signature":  # the requester's key in it, but Mallory's signature
        honest = DelegateCertificate.issue(requester.identity, KEY.public_key,
                                           ceiling=to_micro(9), expires=expires)
        cert = DelegateCertificate(honest.node_key, honest.key, honest.scope, to_micro(900),
                                   honest.expires, MALLORY.sign(honest.body()))
    elif forge == "expired":
        cert = DelegateCertificate.issue(requester.identity, KEY.public_key,
                                         ceiling=to_micro(9), expires=int(requester.clock()) - 1)
    else:  # a genuine certificate, but the statement signed by another key
        cert = DelegateCertificate.issue(requester.identity, KEY.public_key,
                                         ceiling=to_micro(9), expires=expires)
        key = MALLORY
    with pytest.raises(SettlementRefused, match=why):
        await requester.settle(provider.node_id, delegation=Delegation(key, cert))
    [seen] = inbound(provider)
    assert seen["ok"] is False and why in seen["why"]
    assert provider.ledger.settlements() == []


@pytest.mark.slow
async def test_deleting_the_key_file_revokes_it(
    make_node: NodeFactory, make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    requester, provider = await owing(make_node, 2)
    clock = Clock(requester.clock())
    path = tmp_path / "thrall_delegate.key"
    delegate.issue(path, requester.identity, ceiling=10, days=1)
    thrall = await settle_thrall(make_thrall, requester, tmp_path, clock)
    path.unlink()
    firing = await fire_settle(thrall, clock)
    assert firing["ok"] is False
    assert firing["detail"] == (f"no delegate key at {path} (revoked, or never issued: run "
                                "`knarr thrall delegate`)")
    assert inbound(provider) == []


async def test_thrall_refuses_an_expired_or_foreign_key_file(
    make_thrall: ThrallFactory, tmp_path: Path
) -> None:
    clock = Clock(NOW)
    node = Node("127.0.0.1", 0, clock=clock)
    path = tmp_path / "thrall_delegate.key"
    write(tmp_path / "recipes", "pay.toml", SETTLE)
    thrall = await make_thrall(node, config=ThrallConfig(enabled=True, bundled=False),
                               clock=clock)
    try:
        delegate.issue(path, MALLORY, ceiling=1, days=1, clock=clock)
        assert "the certificate was issued by another node" in \
            (await fire_settle(thrall, clock))["detail"]
        delegate.issue(path, node.identity, ceiling=1, days=1, clock=clock)
        clock.advance(86400)
        assert (await fire_settle(thrall, clock))["detail"] == \
            "the delegate certificate has expired; run `knarr thrall delegate`"
        path.write_text("{not json")
        assert "cannot read the delegate key" in (await fire_settle(thrall, clock))["detail"]
    finally:
        await thrall.stop()
        await node.stop()


def test_the_settle_path_is_hotwire_only() -> None:
    from knarr.recipes.recipe import RecipeError
    from tests.recipes.conftest import recipe

    with pytest.raises(RecipeError, match="settle is allowed on the hotwire path only"):
        recipe('[trigger]\ntype = "on_tick"\n[evaluate]\ntype = "llm"\nprompt = "triage"\n'
               'actions = ["settle", "log"]\n')
