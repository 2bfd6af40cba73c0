"""The economy between real nodes on loopback: receipts booked on both sides and forged
ones refused, balances that agree after many tasks, the credit limit, settlement,
a provider SIGKILLed mid-task, reputation ranking and unmet demand.

The pure parts (receipt fields, ledger arithmetic, netting between two desks) are in
``test_ledger.py``; :func:`books_problems` from there checks every database here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from knarr.config import EconomyConfig
from knarr.errors import KnarrError, RequestTimeout, TaskFailed, TaskRefused, TaskTimedOut
from knarr.node import taskchannel
from knarr.node.dht import DhtSettings
from knarr.node.economy import (
    BATCH_VERSION,
    InvalidReceipt,
    Receipt,
    ReceiptDraft,
    sign_receipt,
    sign_receipts,
    to_micro,
)
from knarr.node.identity import Identity
from knarr.node.ledger import Ledger
from knarr.node.node import Node
from knarr.node.records import skill_key, tag_key
from knarr.node.settlement import SettlementRefused
from knarr.node.store import Store
from knarr.node.wire import FindValue, Nodes, Value
from tests.conftest import NodeFactory, sheet, wait_for
from tests.node.test_ledger import books_problems

ROOT = Path(__file__).resolve().parents[2]
Signer = Callable[..., Receipt]
MALLORY = Identity.from_seed(b"m" * 32)


async def upper(data: dict[str, Any]) -> dict[str, Any]:
    return {"text": str(data["text"]).upper()}


async def serving(
    make_node: NodeFactory, requester: Node, handler: Callable[..., Any], name: str = "upper",
    *, price: float = 1.0, **node_kwargs: Any,
) -> Node:
    """A provider of ``name`` at ``price``, joined to ``requester``."""
    provider = await make_node(**node_kwargs)
    await provider.join([f"127.0.0.1:{requester.port}"])
    provider.register_handler(name, handler)
    await provider.announce({**sheet(name), "price": price})
    return provider


class Gate:
    """A handler that holds every call until the test releases it."""

    def __init__(self) -> None:
        self.entered = 0
        self.release = asyncio.Event()

    async def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        self.entered += 1
        await self.release.wait()
        return {"text": "done"}


def charged(node: Node, peer: str) -> set[str]:
    """The ids of ``node``'s receipts with ``peer`` that charged something."""
    return {r["id"] for r in node.ledger.receipts(peer=peer, limit=10_000) if r["charged"]}


# ------------------------------------------------------------------------ receipts


async def test_a_completed_task_leaves_the_same_receipt_on_both_sides(
    make_node: NodeFactory,
) -> None:
    requester = await make_node()
    provider = await serving(make_node, requester, upper, price=2.5)
    assert await requester.request("upper", {"text": "hi"}) == {"text": "HI"}
    [mine] = requester.ledger.receipts()
    [theirs] = provider.ledger.receipts()
    assert mine["id"] == theirs["id"]
    assert (mine["role"], theirs["role"]) == ("consumed", "provided")
    assert (mine["peer"], theirs["peer"]) == (provider.node_id, requester.node_id)
    assert mine["charged"] == theirs["charged"] == 2.5 and mine["outcome"] == "completed"
    assert provider.ledger.balance(requester.node_id) == to_micro(2.5)
    assert requester.ledger.balance(provider.node_id) == -to_micro(2.5)
    assert books_problems(requester.store) == books_problems(provider.store) == []


def sign_in_a_batch(provider: Identity, **fields: Any) -> Receipt:
    """:func:`sign_receipt` as version 2: the receipt is signed in a batch beside a decoy,
    so its signature covers a Merkle root and it carries its path to that root."""
    draft = ReceiptDraft(**fields)
    decoy = dataclasses.replace(draft, task=bytes(reversed(draft.task)))
    receipt = sign_receipts(provider, [draft, decoy])[0]
    assert receipt.raw[2] == BATCH_VERSION  # the version byte, after the magic
    return receipt


def lying(
    liar: Identity, lie: Callable[[Signer, Identity, dict[str, Any]], Receipt],
    signer: Signer = sign_receipt,
) -> Callable[[Identity, Sequence[ReceiptDraft]], list[Receipt]]:
    """A stand-in for the task server's batch signer that tells ``lie`` on every receipt
    ``liar`` signs, signing it with ``signer``."""

    def sign(identity: Identity, drafts: Sequence[ReceiptDraft]) -> list[Receipt]:
        if identity is liar:
            return [lie(signer, identity, dataclasses.asdict(d)) for d in drafts]
        return sign_receipts(identity, drafts)

    return sign


def _inflate_price(real: Signer, identity: Identity, fields: dict[str, Any]) -> Receipt:
    return real(identity, **fields | {"price": fields["price"] + 1})


def _other_output(real: Signer, identity: Identity, fields: dict[str, Any]) -> Receipt:
    return real(identity, **fields | {"output_hash": bytes(32)})


def _other_input(real: Signer, identity: Identity, fields: dict[str, Any]) -> Receipt:
    return real(identity, **fields | {"input_hash": bytes(32)})


def _other_task(real: Signer, identity: Identity, fields: dict[str, Any]) -> Receipt:
    return real(identity, **fields | {"task": bytes(16)})


def _other_requester(real: Signer, identity: Identity, fields: dict[str, Any]) -> Receipt:
    return real(identity, **fields | {"requester_key": MALLORY.public_key})


def _other_skill(real: Signer, identity: Identity, fields: dict[str, Any]) -> Receipt:
    return real(identity, **fields | {"skill": "lower"})


def _says_it_failed(real: Signer, identity: Identity, fields: dict[str, Any]) -> Receipt:
    return real(identity, **fields | {"outcome": "failed"})


def _other_signer(real: Signer, identity: Identity, fields: dict[str, Any]) -> Receipt:
    return real(MALLORY, **fields)


def _bad_signature(real: Signer, identity: Identity, fields: dict[str, Any]) -> Receipt:
    receipt = real(identity, **fields)
    return dataclasses.replace(receipt, raw=receipt.raw[:-1] + bytes([receipt.raw[-1] ^ 1]))


@pytest.mark.parametrize(
    ("lie", "why"),
    [
        (_inflate_price, "charging more than the advertised price"),
        (_other_output, "for another output"),
        (_other_input, "for another input"),
        (_other_task, "for another task"),
        (_other_requester, "made out to another requester"),
        (_other_skill, "for another skill"),
        (_says_it_failed, "contradicting the result it came with"),
        (_other_signer, "signed by another node"),
        (_bad_signature, "receipt rejected"),
    ],
    ids=["price", "output", "input", "task", "requester", "skill", "outcome", "signer",
         "signature"],
)
@pytest.mark.parametrize("signer", [sign_receipt, sign_in_a_batch], ids=["v1", "v2"])
async def test_a_lying_provider_is_refused_and_the_honest_one_is_used(
    make_node: NodeFactory, monkeypatch: pytest.MonkeyPatch,
    lie: Callable[[Signer, Identity, dict[str, Any]], Receipt], why: str, signer: Signer,
) -> None:
    requester = await make_node()
    liar = await serving(make_node, requester, upper)
    honest = await serving(make_node, requester, upper)
    monkeypatch.setattr(taskchannel, "sign_receipts", lying(liar.identity, lie, signer))
    for _ in range(3):  # the liar has a good name, so it is tried first
        requester.ledger.observe(liar.node_id, "completed", 1.0)
    record, output = await requester.request_detailed("upper", {"text": "hi"})
    assert record.provider_id == honest.identity.node_id and output == {"text": "HI"}
    assert [r["peer"] for r in requester.ledger.receipts()] == [honest.node_id]
    assert requester.ledger.balance(liar.node_id) == 0
    assert requester.ledger.reputation()[liar.node_id].failures == 1
    assert len(liar.ledger.receipts()) == 1  # the liar booked its own lie ...

    liar.register_handler("solo", upper)
    await liar.announce(sheet("solo"))
    with pytest.raises(InvalidReceipt, match=why):  # ... and alone it gets nothing for it
        await requester.request("solo", {"text": "again"})
    assert [r["peer"] for r in requester.ledger.receipts()] == [honest.node_id]
    assert requester.ledger.reputation()[liar.node_id].failures == 2
    assert books_problems(requester.store) == []


async def test_a_lie_about_the_price_cannot_be_collected(
    make_node: NodeFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    requester = await make_node()
    liar = await serving(make_node, requester, upper)
    monkeypatch.setattr(taskchannel, "sign_receipts", lying(liar.identity, _inflate_price))
    with pytest.raises(InvalidReceipt):
        await requester.request("upper", {"text": "hi"})
    assert requester.ledger.receipts() == []
    assert liar.ledger.balance(requester.node_id) == to_micro(1) + 1
    with pytest.raises(SettlementRefused, match="books differ"):
        await liar.settle(requester.node_id)
    assert liar.ledger.settlements() == requester.ledger.settlements() == []


async def test_no_charge_when_the_requester_is_gone_before_the_result(
    make_node: NodeFactory,
) -> None:
    requester = await make_node()
    gate = Gate()
    provider = await serving(make_node, requester, gate)
    pending = asyncio.ensure_future(requester.request("upper", {"text": "x"}))
    await wait_for(lambda: gate.entered == 1)
    await requester.client.close()  # the requester goes away mid-task
    with pytest.raises(KnarrError):
        await pending
    await wait_for(lambda: not provider.tasks._connections)  # the provider has seen it go
    gate.release.set()
    await wait_for(lambda: provider.tasks.completed == 1)
    assert provider.ledger.receipts() == requester.ledger.receipts() == []
    assert provider.ledger.balance(requester.node_id) == 0


async def test_a_result_after_the_requester_gave_up_is_still_booked(
    make_node: NodeFactory,
) -> None:
    requester = await make_node()
    release = asyncio.Event()

    async def stubborn(data: dict[str, Any]) -> dict[str, Any]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:  # ignores its time limit, and finishes late
            await release.wait()
        return {"text": "late"}

    provider = await serving(make_node, requester, stubborn)
    host, port = provider.address
    with pytest.raises(RequestTimeout):
        await requester.client.call(host, port, provider.identity.public_key, "upper",
                                    {"text": "x"}, timeout=0.1, max_price=to_micro(1))
    assert requester.ledger.receipts() == []
    release.set()
    await wait_for(lambda: len(requester.ledger.receipts()) == 1)
    [late] = requester.ledger.receipts()
    assert late["id"] == provider.ledger.receipts()[0]["id"] and late["charged"] == 1
    assert requester.ledger.balance(provider.node_id) == -to_micro(1)
    assert provider.ledger.balance(requester.node_id) == to_micro(1)


@pytest.mark.parametrize("fails", ["signing", "booking"])
async def test_a_turn_whose_receipts_fail_sends_no_result_and_holds_no_credit(
    make_node: NodeFactory, monkeypatch: pytest.MonkeyPatch, fails: str,
) -> None:
    requester = await make_node()
    provider = await serving(make_node, requester, upper, economy=EconomyConfig(credit_limit=1))

    def broken(*_: Any) -> Any:
        raise OSError("disk full")

    if fails == "signing":
        monkeypatch.setattr(taskchannel, "sign_receipts", broken)
    else:
        monkeypatch.setattr(provider.tasks._outbox._accounting, "book", broken)
    host, port = provider.address
    with pytest.raises(RequestTimeout):  # no result, since no receipt could be booked
        await requester.client.call(host, port, provider.identity.public_key, "upper",
                                    {"text": "a"}, timeout=0.1, max_price=to_micro(1))
    assert provider.ledger.receipts() == requester.ledger.receipts() == []
    monkeypatch.undo()
    # A credit of 1 at a price of 1: this call is refused if the first one's hold leaked.
    assert await requester.request("upper", {"text": "b"}) == {"text": "B"}
    assert provider.ledger.balance(requester.node_id) == to_micro(1)
    assert books_problems(requester.store) == books_problems(provider.store) == []


# ------------------------------------------------------------------------ balances

PRICES = (0.5, 1.0, 1.25, 2.0)


def _outcome(n: int) -> str:
    return "failed" if n % 5 == 3 else "timeout" if n % 7 == 6 else "completed"


async def work(data: dict[str, Any]) -> dict[str, Any]:
    n = int(data["text"])
    if _outcome(n) == "failed":
        raise ValueError(f"task {n} fails")
    if _outcome(n) == "timeout":
        await asyncio.Event().wait()
    return {"text": str(n)}


@pytest.mark.slow
async def test_balances_agree_on_both_sides_after_many_tasks(make_node: NodeFactory) -> None:
    nodes = [await make_node(max_task_timeout=0.5) for _ in PRICES]  # hangs end at 0.5 s
    for node in nodes[1:]:
        await node.join([f"127.0.0.1:{nodes[0].port}"])
    for i, node in enumerate(nodes):
        node.register_handler(f"work-{i}", work)
        await node.announce({**sheet(f"work-{i}"), "price": PRICES[i]})
    calls = {(i, j): 10 + 2 * i + j for i in range(4) for j in range(4) if i != j}

    async def stream(i: int, j: int) -> None:
        for n in range(calls[i, j]):
            try:
                await nodes[i].request(f"work-{j}", {"text": str(n)})
            except (TaskFailed, TaskTimedOut) as exc:
                assert _outcome(n) == ("failed" if isinstance(exc, TaskFailed) else "timeout")
            else:
                assert _outcome(n) == "completed"

    await asyncio.gather(*(stream(i, j) for i, j in calls))

    def completed(i: int, j: int) -> int:
        return sum(1 for n in range(calls[i, j]) if _outcome(n) == "completed")

    for i in range(4):
        for j in range(i + 1, 4):
            a, b = nodes[i], nodes[j]
            owed_by_a = to_micro(completed(i, j) * PRICES[j] - completed(j, i) * PRICES[i])
            assert b.ledger.balance(a.node_id) == owed_by_a == -a.ledger.balance(b.node_id)
            on_a = a.ledger.receipts(peer=b.node_id, limit=1000)
            on_b = b.ledger.receipts(peer=a.node_id, limit=1000)
            assert len(on_a) == calls[i, j] + calls[j, i]
            assert {r["id"] for r in on_a} == {r["id"] for r in on_b}
            assert all(r["charged"] == 0 for r in on_a if r["outcome"] != "completed")
            assert {r["outcome"] for r in on_a} == {"completed", "failed", "timeout"}
    for node in nodes:
        assert node.ledger.totals()["unbalanced_transactions"] == 0
        assert books_problems(node.store) == []


# ------------------------------------------------------------------------ credit


async def test_the_call_past_the_credit_limit_is_refused_clearly(
    make_node: NodeFactory,
) -> None:
    requester = await make_node()
    provider = await serving(make_node, requester, upper,
                             economy=EconomyConfig(credit_limit=3))
    for i in range(3):
        await requester.request("upper", {"text": f"call {i}"})
    with pytest.raises(TaskRefused) as refused:
        await requester.request("upper", {"text": "one too many"})
    assert refused.value.code == "credit_limit"
    assert str(refused.value) == (
        "credit limit reached: you owe 3 of 3 credits here; settle before calling again"
    )
    assert len(provider.ledger.receipts()) == len(requester.ledger.receipts()) == 3
    assert provider.ledger.balance(requester.node_id) == to_micro(3)
    assert requester.ledger.reputation()[provider.node_id].failures == 0  # not its fault


async def test_tasks_that_finish_together_share_one_signature_and_both_books_agree(
    make_node: NodeFactory,
) -> None:
    requester = await make_node()
    gate = Gate()
    provider = await serving(make_node, requester, gate)
    calls = asyncio.gather(*(requester.request("upper", {"text": str(i)}) for i in range(10)))
    await wait_for(lambda: gate.entered == 10)
    gate.release.set()  # all ten finish in one turn: one batch, one signature
    assert await calls == [{"text": "done"}] * 10
    raws = [bytes(row[0]) for row in provider.store.execute("SELECT raw FROM receipts")]
    assert len(raws) == 10 and {raw[2] for raw in raws} == {2}
    assert len({raw[-64:] for raw in raws}) == 1
    assert charged(requester, provider.node_id) == charged(provider, requester.node_id)
    assert len(charged(provider, requester.node_id)) == 10
    assert provider.ledger.balance(requester.node_id) == to_micro(10)
    assert books_problems(requester.store) == books_problems(provider.store) == []


async def test_concurrent_calls_cannot_overrun_the_limit(make_node: NodeFactory) -> None:
    requester = await make_node()
    gate = Gate()
    provider = await serving(make_node, requester, gate, economy=EconomyConfig(credit_limit=3))
    calls = asyncio.gather(
        *(requester.request("upper", {"text": str(i)}) for i in range(10)),
        return_exceptions=True,
    )
    await wait_for(lambda: gate.entered == 3 and provider.tasks.refused == 7)
    gate.release.set()
    results = await calls
    done = [r for r in results if r == {"text": "done"}]
    refused = [r for r in results if isinstance(r, TaskRefused)]
    assert len(done) == 3 and len(refused) == 7
    assert {r.code for r in refused} == {"credit_limit"}
    assert gate.entered == 3
    assert provider.ledger.balance(requester.node_id) == to_micro(3)


async def test_a_per_peer_credit_overrides_the_default(make_node: NodeFactory) -> None:
    trusted = await make_node()
    stranger = await make_node()
    await stranger.join([f"127.0.0.1:{trusted.port}"])
    economy = EconomyConfig(credit_limit=1, credit={trusted.node_id: 4})
    await serving(make_node, trusted, upper, economy=economy)
    for _ in range(4):
        await trusted.request("upper", {"text": "x"})
    await stranger.request("upper", {"text": "x"})
    with pytest.raises(TaskRefused, match="you owe 4 of 4 credits"):
        await trusted.request("upper", {"text": "x"})
    with pytest.raises(TaskRefused, match="you owe 1 of 1 credits"):
        await stranger.request("upper", {"text": "x"})


async def test_free_and_failed_tasks_use_no_credit(make_node: NodeFactory) -> None:
    requester = await make_node()

    async def fails(data: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("no")

    provider = await serving(make_node, requester, fails, "fails",
                             economy=EconomyConfig(credit_limit=1))
    provider.register_handler("free", upper)
    await provider.announce({**sheet("free"), "price": 0})
    provider.register_handler("upper", upper)
    await provider.announce({**sheet("upper"), "price": 1})
    for _ in range(3):
        with pytest.raises(TaskFailed):
            await requester.request("fails", {"text": "x"})
    await requester.request("upper", {"text": "x"})
    for _ in range(3):
        await requester.request("free", {"text": "x"})
    with pytest.raises(TaskRefused, match="credit limit reached"):
        await requester.request("upper", {"text": "x"})
    assert provider.ledger.balance(requester.node_id) == to_micro(1)


async def test_a_node_calling_its_own_skill_owes_itself_nothing(
    make_node: NodeFactory,
) -> None:
    node = await make_node(economy=EconomyConfig(credit_limit=2))
    node.register_handler("upper", upper)
    await node.announce({**sheet("upper"), "price": 1})
    for _ in range(3):
        assert await node.request("upper", {"text": "me"}) == {"text": "ME"}
    assert node.ledger.balances() == []
    assert books_problems(node.store) == []


async def test_after_settling_the_requester_may_call_again(make_node: NodeFactory) -> None:
    requester = await make_node()
    provider = await serving(make_node, requester, upper,
                             economy=EconomyConfig(credit_limit=3))
    for _ in range(3):
        await requester.request("upper", {"text": "x"})
    with pytest.raises(TaskRefused):
        await requester.request("upper", {"text": "x"})
    statement = await requester.settle(provider.node_id)
    assert statement is not None and statement.amount == to_micro(3)
    assert statement.debtor == requester.identity.node_id
    assert await requester.request("upper", {"text": "again"}) == {"text": "AGAIN"}
    assert provider.ledger.balance(requester.node_id) == to_micro(1)


# ------------------------------------------------------------------------ settlement


async def _trading_pair(make_node: NodeFactory, **kwargs: Any) -> tuple[Node, Node]:
    """A and B, each serving a priced skill: A calls B's three times at 2 credits, B
    calls A's twice at 1.25, so A owes B a net 3.5."""
    a = await make_node(**kwargs.get("a", {}))
    b = await serving(make_node, a, upper, "b-skill", price=2, **kwargs.get("b", {}))
    a.register_handler("a-skill", upper)
    await a.announce({**sheet("a-skill"), "price": 1.25})
    for _ in range(3):
        await a.request("b-skill", {"text": "x"})
    for _ in range(2):
        await b.request("a-skill", {"text": "x"})
    return a, b


async def test_mutual_balances_net_and_settle_on_both_sides(make_node: NodeFactory) -> None:
    a, b = await _trading_pair(make_node)
    assert b.ledger.balance(a.node_id) == to_micro(3.5) == -a.ledger.balance(b.node_id)
    statement = await a.settle(b.node_id)
    assert statement is not None
    assert (statement.debtor, statement.creditor) == (a.identity.node_id, b.identity.node_id)
    assert statement.amount == to_micro(3.5) and statement.count == 5
    assert a.ledger.balance(b.node_id) == b.ledger.balance(a.node_id) == 0
    [on_a], [on_b] = a.ledger.settlements(), b.ledger.settlements()
    assert on_a["id"] == on_b["id"] == statement.id.hex()
    assert (on_a["amount"], on_b["amount"]) == (-3.5, 3.5)
    assert all(r["settlement"] == on_a["id"] for r in a.ledger.receipts())
    assert all(r["settlement"] == on_b["id"] for r in b.ledger.receipts())
    assert books_problems(a.store) == books_problems(b.store) == []
    assert await a.settle(b.node_id) is None  # nothing owed any more
    assert await b.settle(a.node_id) is None


async def test_nothing_owed_settles_nothing(make_node: NodeFactory) -> None:
    a = await make_node()
    b = await serving(make_node, a, upper, price=0)
    assert await a.settle(b.node_id) is None
    await a.request("upper", {"text": "free"})
    assert await a.settle(b.node_id) is None and await b.settle(a.node_id) is None
    assert a.ledger.settlements() == b.ledger.settlements() == []


async def test_books_that_differ_are_refused_and_nothing_is_booked(
    make_node: NodeFactory, tmp_path: Path,
) -> None:
    b_db = tmp_path / "b.db"
    a, b = await _trading_pair(
        make_node, a={"storage": tmp_path / "a.db"}, b={"storage": b_db},
    )
    # B's database loses one receipt of A's calls, with its ledger rows, in one transaction.
    tamper = Store(b_db)
    with tamper.transaction():
        [(gone,)] = tamper.execute(
            "SELECT id FROM receipts WHERE role = 'provided' LIMIT 1")
        tamper.execute("DELETE FROM receipts WHERE id = ?", (gone,))
        tamper.execute("DELETE FROM ledger WHERE txn = ?", (gone,))
    tamper.close()
    b.ledger.reload()  # the file was changed behind the running node's back
    assert books_problems(b.store) == []  # still balanced, just different
    with pytest.raises(SettlementRefused) as refused:
        await a.settle(b.node_id)
    assert str(refused.value) == (
        "the peer refused the settlement: books differ: we see 1.5 credits over 4 receipts,"
        " you proposed 3.5 over 5"
    )
    with pytest.raises(SettlementRefused, match=(
        "books differ: we see 3.5 credits over 5 receipts, you proposed 1.5 over 4"
    )):
        await b.settle(a.node_id)
    assert a.ledger.settlements() == b.ledger.settlements() == []
    assert a.ledger.balance(b.node_id) == -to_micro(3.5)
    assert b.ledger.balance(a.node_id) == to_micro(1.5)
    assert all(r["settlement"] is None for r in a.ledger.receipts() + b.ledger.receipts())


# ------------------------------------------------------------------------ crash


class ProviderProcess:
    """``tests/node/provider_process.py`` on a database the test inspects."""

    def __init__(self, db: Path, gates: Path, bootstrap: str, *extra: str) -> None:
        self.args = [str(db), str(gates), bootstrap, *extra]
        self.proc: asyncio.subprocess.Process | None = None
        self.node_id = ""

    async def start(self) -> ProviderProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.node.provider_process", *self.args,
            stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        self.node_id = json.loads(line)["node_id"]
        return self

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        assert await self.proc.wait() == -signal.SIGKILL

    async def stop(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
            assert await asyncio.wait_for(self.proc.wait(), 30) == 0


@pytest.fixture
async def processes() -> AsyncIterator[list[ProviderProcess]]:
    started: list[ProviderProcess] = []
    yield started
    for p in started:
        if p.proc is not None and p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()


def _open_books(db: Path) -> tuple[Store, Ledger]:
    store = Store(db)
    return store, Ledger(store, clock=lambda: 0.0)


async def _until_exists(path: Path) -> None:
    await wait_for(path.exists, timeout=20)


@pytest.mark.slow
async def test_a_provider_killed_mid_task_keeps_consistent_books(
    make_node: NodeFactory, tmp_path: Path, processes: list[ProviderProcess],
) -> None:
    db, gates = tmp_path / "provider.db", tmp_path / "gates"
    gates.mkdir()
    requester = await make_node(storage=tmp_path / "requester.db")
    boot = f"127.0.0.1:{requester.port}"
    provider = ProviderProcess(db, gates, boot)
    processes.append(await provider.start())
    for text in ("a", "b"):
        (gates / f"go-{text}").touch()
        assert await requester.request("gated", {"text": text}) == {"text": text.upper()}

    pending = asyncio.ensure_future(requester.request("gated", {"text": "c"}))
    await _until_exists(gates / "started-c")
    await provider.kill()
    with pytest.raises(KnarrError):
        await pending

    store, ledger = _open_books(db)
    assert books_problems(store) == []
    assert len(ledger.receipts()) == 2
    assert ledger.balance(requester.node_id) == to_micro(2)
    store.close()

    again = ProviderProcess(db, gates, boot)
    processes.append(await again.start())
    assert again.node_id == provider.node_id  # the same identity, from the same database
    (gates / "go-c").touch()
    assert await requester.request("gated", {"text": "c"}) == {"text": "C"}
    await again.stop()

    store, ledger = _open_books(db)
    assert books_problems(store) == []
    assert ledger.balance(requester.node_id) == to_micro(3)
    assert {r["id"] for r in ledger.receipts()} == charged(requester, provider.node_id)
    store.close()
    assert requester.ledger.balance(provider.node_id) == -to_micro(3)
    assert books_problems(requester.store) == []


@pytest.mark.slow
async def test_a_provider_killed_during_a_burst_of_bookings_keeps_consistent_books(
    make_node: NodeFactory, tmp_path: Path, processes: list[ProviderProcess],
) -> None:
    db, gates = tmp_path / "provider.db", tmp_path / "gates"
    gates.mkdir()
    burst = [f"t{i}" for i in range(40)]
    # Thirty tasks may finish (a burst of bookings), ten never do: however quickly the
    # thirty go through, the kill still lands with tasks in flight.
    for text in burst[:30]:
        (gates / f"go-{text}").touch()
    requester = await make_node()
    provider = ProviderProcess(db, gates, f"127.0.0.1:{requester.port}")
    processes.append(await provider.start())
    calls = asyncio.gather(
        *(requester.request("gated", {"text": t}) for t in burst), return_exceptions=True
    )
    await wait_for(lambda: sum((gates / f"started-{t}").exists() for t in burst) >= 10)
    await provider.kill()
    results = await calls
    assert any(isinstance(r, KnarrError) for r in results)

    store, ledger = _open_books(db)
    assert books_problems(store) == []
    booked = {r["id"] for r in ledger.receipts(limit=1000)}
    store.close()
    got = charged(requester, provider.node_id)
    assert len(got) == sum(1 for r in results if isinstance(r, dict))
    assert got <= booked  # the provider books before its result leaves
    assert books_problems(requester.store) == []


@pytest.mark.slow
async def test_a_charge_whose_result_never_left_is_voided_when_settling(
    make_node: NodeFactory, tmp_path: Path, processes: list[ProviderProcess],
) -> None:
    """The provider books a charge, then dies before the result leaves. The requester
    never sees the receipt and asks again, so the provider holds two charges and the
    requester one. Settling finds the books differ, reconciles (a charge stands only on
    a receipt its requester holds), and then agrees on one credit."""
    db, gates = tmp_path / "provider.db", tmp_path / "gates"
    gates.mkdir()
    (gates / "go-a").touch()
    requester = await make_node()
    boot = f"127.0.0.1:{requester.port}"
    provider = ProviderProcess(db, gates, boot, "--freeze-after-booking", "1")
    processes.append(await provider.start())
    pending = asyncio.ensure_future(requester.request("gated", {"text": "a"}))
    await _until_exists(gates / "booked-1")
    await provider.kill()
    with pytest.raises(KnarrError):
        await pending

    store, ledger = _open_books(db)
    assert books_problems(store) == []  # consistent on its own, but one charge ahead
    store.close()
    again = ProviderProcess(db, gates, boot, "--reconcile-grace", "0")
    processes.append(await again.start())
    assert await requester.request("gated", {"text": "a"}) == {"text": "A"}
    assert requester.ledger.balance(provider.node_id) == -to_micro(1)

    statement = await requester.settle(provider.node_id, timeout=10)
    assert statement is not None and statement.amount == to_micro(1)
    assert statement.debtor.hex() == requester.node_id
    await again.stop()
    store, ledger = _open_books(db)
    try:
        assert ledger.balance(requester.node_id) == 0 == requester.ledger.balance(
            provider.node_id
        )
        voided = store.execute("SELECT COUNT(*) FROM receipts WHERE settlement = 'void'")
        assert voided[0][0] == 1
        assert books_problems(store) == [] == books_problems(requester.store)
    finally:
        store.close()


# ------------------------------------------------------------------------ reputation


def _failing_most_of_the_time() -> Callable[[dict[str, Any]], Any]:
    calls = 0

    async def flaky(data: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls % 5:
            raise RuntimeError("flaky")
        return {"text": "flaky"}

    return flaky


async def _knarr_info(db: Path, *args: str) -> str:
    """``knarr info`` in its own process, while this test's loop (and node) runs on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "knarr.cli.main", "info", "--storage", str(db), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_a_failing_provider_ranks_below_a_reliable_one(
    make_node: NodeFactory, tmp_path: Path,
) -> None:
    db = tmp_path / "requester.db"
    requester = await make_node(storage=db)
    flaky = await serving(make_node, requester, _failing_most_of_the_time(), "rank-me")
    reliable = await serving(make_node, requester, upper, "rank-me")
    flaky_id, reliable_id = flaky.node_id, reliable.node_id
    for _ in range(4):  # it was good once, so it is tried first until it proves otherwise
        requester.ledger.observe(flaky_id, "completed", 5.0)
    for _ in range(10):  # fallback to the reliable one hides every failure from the caller
        assert await requester.request("rank-me", {"text": "x"}) == {"text": "X"}
    stats = requester.ledger.reputation()
    assert stats[flaky_id].failures >= 3 and stats[flaky_id].successes == 4
    assert stats[reliable_id].successes == 10 and stats[reliable_id].failures == 0
    assert stats[reliable_id].score > stats[flaky_id].score
    order = [r.provider_id.hex() for r in await requester.find_skills("rank-me")]
    assert order == [reliable_id, flaky_id]

    as_json, as_table = await asyncio.gather(
        _knarr_info(db, "--reputation", "--json"), _knarr_info(db, "--reputation"))
    info = json.loads(as_json)
    assert [r["provider"] for r in info["reputation"]] == [reliable_id, flaky_id]
    header = next(i for i, line in enumerate(as_table.splitlines()) if "PROVIDER" in line)
    rows = [line.split() for line in as_table.splitlines()[header + 1:]]
    assert [r[0] for r in rows] == [reliable_id[:16] + "...", flaky_id[:16] + "..."]
    assert float(rows[0][1]) > float(rows[1][1])
    assert info["reputation"][0]["failures"] == 0
    assert info["reputation"][1]["failures"] == stats[flaky_id].failures
    assert await requester.request("rank-me", {"text": "still"}) == {"text": "STILL"}


async def test_evidence_counts_and_request_tries_the_best_first(
    make_node: NodeFactory,
) -> None:
    requester = await make_node()
    seen: list[str] = []

    def tagged(label: str) -> Callable[[dict[str, Any]], Any]:
        async def handler(data: dict[str, Any]) -> dict[str, Any]:
            seen.append(label)
            return {"text": label}
        return handler

    newcomer = await serving(make_node, requester, tagged("newcomer"), "wilson")
    veteran = await serving(make_node, requester, tagged("veteran"), "wilson")
    requester.ledger.observe(newcomer.node_id, "completed", 10.0)
    for _ in range(50):
        requester.ledger.observe(veteran.node_id, "completed", 10.0)
    order = [r.provider_id for r in await requester.find_skills("wilson")]
    assert order == [veteran.identity.node_id, newcomer.identity.node_id]
    assert await requester.request("wilson", {"text": "x"}) == {"text": "veteran"}
    for _ in range(60):  # 51 of 111 over many calls still beats 1 of 1
        requester.ledger.observe(veteran.node_id, "failed")
    assert await requester.request("wilson", {"text": "x"}) == {"text": "veteran"}
    for _ in range(200):  # 52 of 312 does not
        requester.ledger.observe(veteran.node_id, "failed")
    assert await requester.request("wilson", {"text": "x"}) == {"text": "newcomer"}
    assert seen == ["veteran", "veteran", "newcomer"]  # one provider per request


# ------------------------------------------------------------------------ demand


def _demand(node: Node) -> dict[tuple[str, str], int]:
    return {(r["kind"], r["name"]): r["count"] for r in node.ledger.demand()}


async def test_unmet_demand_is_counted_here_and_where_the_key_lives(
    make_node: NodeFactory,
) -> None:
    requester = await make_node()
    provider = await serving(make_node, requester, upper, "served")
    third = await make_node()
    await third.join([f"127.0.0.1:{requester.port}"])
    assert await requester.find_skills("nobody-has-this") == []
    assert await requester.find_skills("nobody-has-this") == []
    assert await requester.find_skills(tag="nothing-here") == []
    assert await requester.find_skills("served")
    want = {("skill", "nobody-has-this"): 2, ("tag", "nothing-here"): 1}
    assert _demand(requester) == want
    for node in (provider, third):  # a network smaller than k: every node is responsible
        assert _demand(node) == want
    with pytest.raises(KnarrError, match="no provider serves 'nobody-has-this'"):
        await requester.request("nobody-has-this", {})
    assert _demand(requester)[("skill", "nobody-has-this")] == 3
    assert _demand(provider)[("skill", "nobody-has-this")] == 3


@pytest.mark.parametrize(
    ("key", "query", "counted"),
    [
        (skill_key("wanted"), "skill:wanted", {("skill", "wanted"): 1}),
        (tag_key("gpu"), "tag:gpu", {("tag", "gpu"): 1}),
        (skill_key("wanted"), "skill:something-else", {}),
        (skill_key("wanted"), "tag:wanted", {}),
        (tag_key("gpu"), "skill:gpu", {}),
        (skill_key("wanted"), "", {}),
        (skill_key(""), "skill:", {}),
        # Names no record could carry: the query hashes to its key, but is not counted.
        (skill_key("Not A Name"), "skill:Not A Name", {}),
        (tag_key("t" * 33), "tag:" + "t" * 33, {}),
    ],
    ids=["skill", "tag", "other-name", "other-kind", "kind-swapped", "no-query", "empty-name",
         "bad-skill-name", "tag-too-long"],
)
async def test_only_a_query_that_hashes_to_its_key_is_counted(
    make_node: NodeFactory, key: bytes, query: str, counted: dict[tuple[str, str], int],
) -> None:
    asker = await make_node()
    holder = await make_node()
    await holder.join([f"127.0.0.1:{asker.port}"])
    reply = await asker.dht.request(holder.address, FindValue(key, query=query),
                                    expect=holder.identity.node_id)
    assert isinstance(reply.message, Nodes)
    assert _demand(holder) == counted


async def test_a_served_key_and_later_pages_are_not_counted(make_node: NodeFactory) -> None:
    asker = await make_node()
    holder = await serving(make_node, asker, upper, "wanted")
    reply = await asker.dht.request(
        holder.address, FindValue(skill_key("wanted"), query="skill:wanted"),
        expect=holder.identity.node_id,
    )
    assert isinstance(reply.message, Value)
    await asker.dht.request(
        holder.address, FindValue(skill_key("gone"), offset=1, query="skill:gone"),
        expect=holder.identity.node_id,
    )
    assert _demand(holder) == {}


async def test_a_served_skill_is_never_counted_as_unmet(make_node: NodeFactory) -> None:
    settings = {"settings": DhtSettings(k=3)}
    nodes = [await make_node(**settings) for _ in range(10)]
    for node in nodes[1:]:
        await node.join([f"127.0.0.1:{nodes[0].port}"])
    nodes[1].register_handler("served", upper)
    await nodes[1].announce(sheet("served"))
    for node in nodes:
        assert await node.find_skills("served")
    assert {n.node_id[:8]: _demand(n) for n in nodes if _demand(n)} == {}
