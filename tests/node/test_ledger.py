"""The economy without a socket: receipts signed, verified and forged; the double-entry
ledger; credit holds; netting between two desks; reputation scores; unmet demand.

Identities, task ids and clocks are fixed, and every database is in memory, so each
test is exact. :func:`books_problems` is the consistency check the networked suites
(``test_economy.py``, the SIGKILL test) run on real node databases too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import knarr.node.ledger as ledger_module
from knarr.config import EconomyConfig
from knarr.errors import MistypedMessage
from knarr.node import cbor
from knarr.node.economy import (
    MAX_BATCH,
    MICRO,
    RECEIPT_MAGIC,
    InvalidReceipt,
    ProviderStats,
    Receipt,
    ReceiptDraft,
    Statement,
    check_receipt,
    digest,
    parse_receipt,
    path_length,
    rank,
    receipts_hash,
    reputation_score,
    sign_receipt,
    sign_receipts,
    to_credits,
    to_micro,
    wilson_lower_bound,
)
from knarr.node.identity import Identity
from knarr.node.ledger import CreditBooks, Ledger
from knarr.node.settlement import (
    SettlementDesk,
    SettlementRefused,
    SettlePropose,
    SettleReconcile,
    SettleReconciled,
)
from knarr.node.store import Store
from knarr.node.tasks import TaskRefusal

PROVIDER = Identity.from_seed(b"p" * 32)
REQUESTER = Identity.from_seed(b"r" * 32)
MALLORY = Identity.from_seed(b"m" * 32)
NOW_MS = 1_700_000_000_000
TASK = b"\x01" * 16
INPUT = {"text": "hi"}
OUTPUT_HASH = hashlib.sha256(cbor.encode({"ok": {"text": "HI"}})).digest()
PRICE = to_micro(1.5)


def make_receipt(provider: Identity = PROVIDER, requester: Identity = REQUESTER,
                 **changes: Any) -> Receipt:
    fields: dict[str, Any] = {
        "task": TASK, "skill": "upper", "price": PRICE, "requester_key": requester.public_key,
        "input_hash": digest(INPUT), "output_hash": OUTPUT_HASH, "time_ms": NOW_MS,
        "outcome": "completed", "duration_ms": 12,
    }
    return sign_receipt(provider, **(fields | changes))


def expected(**changes: Any) -> dict[str, Any]:
    """What the requester of :func:`make_receipt`'s task checks it against."""
    return {
        "provider_key": PROVIDER.public_key, "requester_key": REQUESTER.public_key,
        "task": TASK, "input_hash": digest(INPUT), "output_hash": OUTPUT_HASH,
        "max_price": PRICE,
    } | changes


def body_of(receipt: Receipt) -> dict[str, Any]:
    decoded = cbor.decode(receipt.raw[35:-64])
    assert isinstance(decoded, dict)
    return decoded


def signed_raw(body: dict[str, Any], signer: Identity = PROVIDER, *, version: int = 1) -> bytes:
    """A receipt with any body, correctly signed: only the field checks can reject it."""
    signed = RECEIPT_MAGIC + bytes([version]) + signer.public_key + cbor.encode(body)
    return signed + signer.sign(signed)


def books_problems(store: Store) -> list[str]:
    """Everything inconsistent in a node's books (empty when they are sound): every
    transaction sums to zero; a charged receipt has exactly its two ledger rows and an
    uncharged one none; a voided one also the two rows that reverse them; every
    settlement has its two rows; no ledger row without a receipt or settlement; every
    stored receipt verifies and is keyed by its hash."""
    problems: list[str] = []
    unbalanced = Ledger(store, clock=lambda: 0.0).totals()["unbalanced_transactions"]
    if unbalanced:
        problems.append(f"{unbalanced} transactions do not sum to zero")
    rows: dict[str, set[tuple[str, int]]] = {}
    for txn, account, amount in store.execute("SELECT txn, account, amount FROM ledger"):
        rows.setdefault(str(txn), set()).add((str(account), int(amount)))
    counted = dict(store.execute("SELECT txn, COUNT(*) FROM ledger GROUP BY txn"))
    receipts = store.execute(
        "SELECT id, role, peer, price, charged, outcome, settlement, raw FROM receipts"
    )
    for rid, role, peer, price, charged, outcome, settlement, raw in receipts:
        receipt = parse_receipt(bytes(raw))
        if receipt.id != rid or receipt.charged != charged or receipt.price != price:
            problems.append(f"receipt {rid[:8]} does not match its signed text")
        if charged != (price if outcome == "completed" else 0):
            problems.append(f"receipt {rid[:8]} charges {charged} for outcome {outcome}")
        sign = 1 if role == "provided" else -1
        want = {(f"peer:{peer}", sign * charged), (role, -sign * charged)} if charged else None
        if rows.pop(rid, None) != want or (want and counted.get(rid) != 2):
            problems.append(f"receipt {rid[:8]} lacks its ledger rows or has extra ones")
        if settlement == "void":
            if rows.pop(f"void:{rid}", None) != {(a, -v) for a, v in want or ()} or not want:
                problems.append(f"voided receipt {rid[:8]} lacks its reversing rows")
        elif settlement is not None and not store.execute(
            "SELECT 1 FROM settlements WHERE id = ?", (settlement,)
        ):
            problems.append(f"receipt {rid[:8]} names a settlement that does not exist")
    for sid, peer, amount in store.execute("SELECT id, peer, amount FROM settlements"):
        want = {(f"peer:{peer}", -amount), (f"settled:{peer}", amount)}
        if rows.pop(sid, None) != want or counted.get(sid) != 2:
            problems.append(f"settlement {sid[:8]} lacks its ledger rows")
    problems += [f"ledger rows for {txn[:8]} have no receipt or settlement" for txn in rows]
    return problems


class Clock:
    """A clock the test moves."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store(":memory:")
    yield s
    s.close()


@pytest.fixture
def ledger(store: Store) -> Ledger:
    return Ledger(store, Clock())


# ------------------------------------------------------------------------ receipts


def test_a_signed_receipt_parses_to_what_was_signed() -> None:
    receipt = make_receipt()
    parsed = parse_receipt(receipt.raw)
    assert (parsed.task, parsed.skill, parsed.price, parsed.outcome) == (
        TASK, "upper", PRICE, "completed")
    assert parsed.provider == PROVIDER.node_id and parsed.requester == REQUESTER.node_id
    assert parsed.id == hashlib.sha256(receipt.raw).hexdigest() == receipt.id
    assert parsed.charged == PRICE
    as_dict = parsed.to_dict()
    assert as_dict["price"] == as_dict["charged"] == 1.5
    assert as_dict["provider"] == PROVIDER.node_id_hex


def test_the_requesters_checks_accept_a_matching_receipt() -> None:
    check_receipt(make_receipt(), **expected())
    check_receipt(make_receipt(), **expected(skill="upper", completed=True))
    check_receipt(make_receipt(outcome="timeout"), **expected(completed=False))
    check_receipt(make_receipt(price=to_micro(1)), **expected())  # cheaper is fine


@pytest.mark.parametrize("outcome", ["failed", "timeout"])
def test_a_failed_or_timed_out_task_charges_nothing(outcome: str) -> None:
    receipt = make_receipt(outcome=outcome)
    assert receipt.price == PRICE and receipt.charged == 0


@pytest.mark.parametrize(
    ("receipt", "check", "why"),
    [
        (lambda: make_receipt(provider=MALLORY), {}, "signed by another node"),
        (lambda: make_receipt(requester=MALLORY), {}, "made out to another requester"),
        (lambda: make_receipt(task=b"\x02" * 16), {}, "for another task"),
        (lambda: make_receipt(input_hash=digest({"text": "other"})), {}, "for another input"),
        (lambda: make_receipt(output_hash=bytes(32)), {}, "for another output"),
        (lambda: make_receipt(price=PRICE + 1), {}, "more than the advertised price"),
        (make_receipt, {"max_price": 0}, "more than the advertised price"),
        (lambda: make_receipt(skill="lower"), {"skill": "upper"}, "for another skill"),
        (lambda: make_receipt(outcome="failed"), {"completed": True},
         "contradicting the result it came with"),
        (make_receipt, {"completed": False}, "contradicting the result it came with"),
    ],
    ids=["wrong-provider", "other-requester", "other-task", "other-input", "other-output",
         "over-price", "priced-but-free", "other-skill", "failed-but-answered",
         "completed-but-error"],
)
def test_the_requester_rejects_a_receipt_that_does_not_match(
    receipt: Callable[[], Receipt], check: dict[str, Any], why: str
) -> None:
    with pytest.raises(InvalidReceipt, match=why):
        check_receipt(receipt(), **expected(**check))


def _flip_signature(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 1])


def _altered_price(raw: bytes) -> bytes:
    body = body_of(parse_receipt(raw)) | {"price": 1}
    return raw[:35] + cbor.encode(body) + raw[-64:]


def _other_key(raw: bytes) -> bytes:
    return raw[:3] + MALLORY.public_key + raw[35:]


def _resigned_by_mallory_as_provider(raw: bytes) -> bytes:
    signed = raw[:3] + PROVIDER.public_key + raw[35:-64]
    return signed + MALLORY.sign(signed)


@pytest.mark.parametrize(
    "forge",
    [_flip_signature, _altered_price, _other_key, _resigned_by_mallory_as_provider],
    ids=["bad-signature", "altered-field", "key-swapped", "signed-by-impostor"],
)
def test_a_forged_receipt_does_not_parse(forge: Callable[[bytes], bytes]) -> None:
    with pytest.raises(InvalidReceipt, match="receipt rejected"):
        parse_receipt(forge(make_receipt().raw))


def _good_body() -> dict[str, Any]:
    return body_of(make_receipt())


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (lambda: b"", "not a knarr receipt"),
        (lambda: b"XX" + make_receipt().raw[2:], "not a knarr receipt"),
        (lambda: make_receipt().raw[:90], "not a knarr receipt"),
        (lambda: signed_raw(_good_body() | {"skill": "x" * 2100}), "not a knarr receipt"),
        (lambda: signed_raw(_good_body(), version=3), "unsupported receipt version 3"),
        (lambda: signed_raw(_good_body() | {"tip": 5}), "missing or unexpected fields"),
        (lambda: signed_raw({k: v for k, v in _good_body().items() if k != "req"}),
         "missing or unexpected fields"),
        (lambda: signed_raw(_good_body() | {"price": -1}), "wrong types"),
        (lambda: signed_raw(_good_body() | {"price": 1.5}), "wrong types"),
        (lambda: signed_raw(_good_body() | {"price": True}), "wrong types"),
        (lambda: signed_raw(_good_body() | {"outcome": "paid"}), "wrong types"),
        (lambda: signed_raw(_good_body() | {"task": b"\x01" * 15}), "wrong types"),
        (lambda: signed_raw(_good_body() | {"req": b"\x01" * 31}), "wrong types"),
        (lambda: signed_raw(_good_body() | {"ms": -5}), "wrong types"),
        (lambda: signed_raw(_good_body() | {"t": -1}), "wrong types"),
        (lambda: signed_raw(_good_body() | {"skill": "s" * 65}), "wrong types"),
        (lambda: signed_raw([1, 2]), "missing or unexpected fields"),  # type: ignore[arg-type]
    ],
    ids=["empty", "magic", "truncated", "oversized", "version", "extra-field",
         "missing-field", "negative-price", "float-price", "bool-price", "outcome",
         "short-task", "short-requester", "negative-duration", "negative-time", "long-skill",
         "not-a-map"],
)
def test_a_malformed_receipt_is_rejected_with_the_reason(
    raw: Callable[[], bytes], why: str
) -> None:
    with pytest.raises(InvalidReceipt, match=why):
        parse_receipt(raw())


def drafts(count: int) -> list[ReceiptDraft]:
    return [
        ReceiptDraft(task=i.to_bytes(16, "big"), skill="upper", price=PRICE,
                     requester_key=REQUESTER.public_key, input_hash=digest(INPUT),
                     output_hash=OUTPUT_HASH, time_ms=NOW_MS, outcome="completed",
                     duration_ms=i)
        for i in range(count)
    ]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 13, 64, MAX_BATCH, MAX_BATCH + 44])
def test_receipts_signed_in_a_batch_each_verify_on_their_own(count: int) -> None:
    signed = sign_receipts(PROVIDER, drafts(count))
    assert [r.task for r in signed] == [d.task for d in drafts(count)]
    for i, receipt in enumerate(signed):
        parsed = parse_receipt(receipt.raw)
        assert dataclasses.asdict(parsed) == dataclasses.asdict(receipt)
        assert parsed.id == receipt.id and parsed.duration_ms == i
        assert dataclasses.replace(receipt).id == receipt.id  # worked out afresh from raw
        position, size = i % MAX_BATCH, min(count - i // MAX_BATCH * MAX_BATCH, MAX_BATCH)
        if size == 1:
            assert receipt.raw[2] == 1 and receipt.id == hashlib.sha256(receipt.raw).hexdigest()
            continue
        assert receipt.raw[2] == 2
        assert receipt.raw[-68:-64] == position.to_bytes(2, "big") + size.to_bytes(2, "big")
        fields = receipt.raw[: len(receipt.raw) - 68 - 32 * path_length(position, size)]
        assert receipt.id == hashlib.sha256(b"\x00" + fields).hexdigest()
    assert len({r.id for r in signed}) == count
    assert len({r.raw[-64:] for r in signed}) == -(-count // MAX_BATCH)  # one per batch


def test_the_paths_of_a_batch_are_as_long_as_rfc_9162_says() -> None:
    # Tree of 5 leaves: ((0 1)(2 3)) 4. Leaf 4 hangs one level below the root.
    assert [path_length(i, 5) for i in range(5)] == [3, 3, 3, 3, 1]
    assert [path_length(i, 7) for i in range(7)] == [3, 3, 3, 3, 3, 3, 2]
    assert {path_length(i, MAX_BATCH) for i in range(MAX_BATCH)} == {8}


def test_a_batch_receipt_with_any_byte_changed_is_refused() -> None:
    receipt = sign_receipts(PROVIDER, drafts(5))[2]
    parse_receipt(receipt.raw)  # its root signature is now remembered as verified
    for at in range(3, len(receipt.raw)):
        tampered = bytearray(receipt.raw)
        tampered[at] ^= 0x01
        with pytest.raises(InvalidReceipt):
            parse_receipt(bytes(tampered))


def test_a_batch_receipt_cannot_be_rewritten_into_another_with_the_same_fields() -> None:
    """Leaf 1 of 3 has the path (leaf 0, leaf 2), and so would leaf 1 of 4 with the same
    hashes: the size is signed with the root, so the rewritten receipt is refused."""
    receipt = sign_receipts(PROVIDER, drafts(3))[1]
    assert receipt.raw[-68:-64] == b"\x00\x01\x00\x03"
    rewritten = receipt.raw[:-66] + b"\x00\x04" + receipt.raw[-64:]
    with pytest.raises(InvalidReceipt, match="receipt rejected"):
        parse_receipt(rewritten)
    too_big = receipt.raw[:-66] + (MAX_BATCH + 1).to_bytes(2, "big") + receipt.raw[-64:]
    with pytest.raises(InvalidReceipt, match="impossible"):
        parse_receipt(too_big)
    past_the_end = receipt.raw[:-68] + b"\x00\x03\x00\x03" + receipt.raw[-64:]
    with pytest.raises(InvalidReceipt, match="impossible"):
        parse_receipt(past_the_end)


def test_micro_credits_are_exact_and_reject_nonsense() -> None:
    assert to_micro(0.1) * 3 == to_micro(0.3) == 300_000
    assert to_credits(to_micro(2.5)) == 2.5 and MICRO == 1_000_000
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="not an amount of credits"):
            to_micro(bad)


# ------------------------------------------------------------------------ ledger


def trade(provider_books: Ledger, requester_books: Ledger, provider: Identity,
          requester: Identity, price: float, *, outcome: str = "completed",
          task: bytes | None = None) -> Receipt:
    """One task, booked by both sides as the task channel books it."""
    receipt = make_receipt(
        provider, requester, price=to_micro(price), outcome=outcome,
        task=task or next(_TASK_IDS),
    )
    assert provider_books.record(receipt, role="provided")
    assert requester_books.record(receipt, role="consumed")
    return receipt


_TASK_IDS = (i.to_bytes(16, "big") for i in itertools.count(1000))


def _books() -> Ledger:
    return Ledger(Store(":memory:"), Clock())


def test_a_receipt_and_its_two_ledger_rows_are_booked_together(ledger: Ledger) -> None:
    receipt = make_receipt()
    assert ledger.record(receipt, role="provided") is True
    peer = REQUESTER.node_id_hex
    assert ledger.balance(peer) == PRICE
    rows = ledger.store.execute("SELECT account, amount FROM ledger WHERE txn = ?", (receipt.id,))
    assert sorted(rows) == [(f"peer:{peer}", PRICE), ("provided", -PRICE)]
    assert ledger.totals() == {"outstanding": PRICE, "provided": -PRICE,
                               "unbalanced_transactions": 0}
    [row] = ledger.receipts()
    assert row["id"] == receipt.id and row["role"] == "provided" and row["peer"] == peer
    assert row["price"] == row["charged"] == 1.5 and row["settlement"] is None
    assert books_problems(ledger.store) == []


def test_a_receipt_booked_twice_counts_once(ledger: Ledger) -> None:
    receipt = make_receipt()
    assert ledger.record(receipt, role="consumed") is True
    assert ledger.record(receipt, role="consumed") is False
    assert ledger.record(parse_receipt(receipt.raw), role="consumed") is False
    assert ledger.balance(PROVIDER.node_id_hex) == -PRICE
    assert len(ledger.receipts()) == 1
    assert ledger.store.execute("SELECT COUNT(*) FROM ledger") == [(2,)]


def test_a_batch_books_each_new_receipt_once(ledger: Ledger) -> None:
    """One group commit may hold a receipt booked before and the same receipt twice."""
    old, new, other = (make_receipt(task=bytes([n]) * 16) for n in (0x21, 0x22, 0x23))
    peer = REQUESTER.node_id_hex
    assert ledger.balance(peer) == 0  # cached from here: the batch must keep it right
    assert ledger.record(old, role="provided") is True
    booked = ledger.record_many([old, new, new, other], role="provided")
    assert booked == [new, other]
    assert ledger.balance(peer) == 3 * PRICE == Ledger(ledger.store, Clock()).balance(peer)
    assert ledger.store.execute("SELECT COUNT(*) FROM ledger") == [(6,)]
    assert ledger.record_many([], role="provided") == []


@pytest.mark.parametrize("outcome", ["failed", "timeout"])
def test_a_failed_task_is_kept_but_charges_nothing(ledger: Ledger, outcome: str) -> None:
    assert ledger.record(make_receipt(outcome=outcome), role="provided")
    assert ledger.balance(REQUESTER.node_id_hex) == 0
    assert ledger.store.execute("SELECT COUNT(*) FROM ledger") == [(0,)]
    [row] = ledger.receipts()
    assert (row["outcome"], row["charged"], row["price"]) == (outcome, 0, 1.5)
    assert ledger.unsettled(REQUESTER.node_id_hex) == []
    assert books_problems(ledger.store) == []


def test_a_failed_booking_leaves_nothing_behind(ledger: Ledger) -> None:
    """The receipt row and its ledger rows are one transaction."""

    class Boom(Exception):
        pass

    real = ledger.store.executemany

    def failing(sql: str, rows: Any) -> None:
        raise Boom

    ledger.store.executemany = failing  # type: ignore[method-assign]
    with pytest.raises(Boom):
        ledger.record(make_receipt(), role="provided")
    ledger.store.executemany = real  # type: ignore[method-assign]
    assert ledger.receipts() == [] and ledger.totals()["unbalanced_transactions"] == 0
    assert ledger.record(make_receipt(), role="provided") is True  # the retry books it once
    assert books_problems(ledger.store) == []


def test_balances_list_every_peer_largest_first(ledger: Ledger) -> None:
    other = Identity.from_seed(b"o" * 32)
    ledger.record(make_receipt(price=to_micro(1)), role="provided")
    ledger.record(make_receipt(requester=other, price=to_micro(4)), role="provided")
    ledger.record(make_receipt(requester=other, price=to_micro(1), outcome="failed",
                               task=b"\x09" * 16), role="provided")
    balances = [(b.peer, b.amount, b.tasks) for b in ledger.balances()]
    assert balances == [(other.node_id_hex, to_micro(4), 2),
                        (REQUESTER.node_id_hex, to_micro(1), 1)]
    assert ledger.peer_key(other.node_id_hex) == other.public_key
    assert ledger.peer_key(MALLORY.node_id_hex) is None


_trades = st.lists(
    st.tuples(
        st.booleans(),  # True: A provides to B
        st.integers(0, 5 * MICRO),
        st.sampled_from(["completed", "completed", "failed", "timeout"]),
        st.booleans(),  # booked a second time (a retried or replayed receipt)
    ),
    max_size=30,
)


@settings(max_examples=40, deadline=None)
@given(_trades)
def test_both_sides_always_agree_on_what_is_owed(
    trades: list[tuple[bool, int, str, bool]],
) -> None:
    a, b = _books(), _books()
    alice, bob = PROVIDER, REQUESTER
    owed_by_b = 0
    for i, (a_provides, price, outcome, twice) in enumerate(trades):
        provider, requester = (alice, bob) if a_provides else (bob, alice)
        p_books, r_books = (a, b) if a_provides else (b, a)
        receipt = make_receipt(provider, requester, price=price, outcome=outcome,
                               task=i.to_bytes(16, "big"))
        p_books.record(receipt, role="provided")
        r_books.record(receipt, role="consumed")
        if twice:
            assert not r_books.record(receipt, role="consumed")
            assert not p_books.record(receipt, role="provided")
        if outcome == "completed":
            owed_by_b += price if a_provides else -price
    assert a.balance(bob.node_id_hex) == owed_by_b == -b.balance(alice.node_id_hex)
    assert a.settlement_view(bob.node_id_hex)[:2] == (
        owed_by_b, b.settlement_view(alice.node_id_hex)[1])
    assert books_problems(a.store) == books_problems(b.store) == []


# ------------------------------------------------------------------------ credit


def _books_with_limit(ledger: Ledger, config: EconomyConfig) -> CreditBooks:
    return CreditBooks(ledger, config.limit_for)


def test_credit_holds_stop_at_the_limit_and_say_so(ledger: Ledger) -> None:
    books = _books_with_limit(ledger, EconomyConfig(credit_limit=3))
    one = to_micro(1)
    for _ in range(3):
        books.reserve(REQUESTER.node_id, one)
    with pytest.raises(TaskRefusal) as refused:
        books.reserve(REQUESTER.node_id, one)
    assert refused.value.code == "credit_limit"
    assert str(refused.value) == (
        "credit limit reached: you owe 3 of 3 credits here; settle before calling again"
    )
    books.reserve(PROVIDER.node_id, one)  # another requester has its own limit
    books.release(REQUESTER.node_id, one)
    books.reserve(REQUESTER.node_id, one)  # a released hold frees room


def test_booked_charges_count_against_the_limit(ledger: Ledger) -> None:
    books = _books_with_limit(ledger, EconomyConfig(credit_limit=3))
    for i in range(2):
        books.book([make_receipt(price=to_micro(1.5), task=bytes([i]) * 16)])
    assert ledger.balance(REQUESTER.node_id_hex) == to_micro(3)
    with pytest.raises(TaskRefusal, match="you owe 3 of 3 credits"):
        books.reserve(REQUESTER.node_id, to_micro(0.5))
    books.reserve(REQUESTER.node_id, 0)  # free skills are never refused


def test_what_we_owe_a_peer_extends_its_credit(ledger: Ledger) -> None:
    books = _books_with_limit(ledger, EconomyConfig(credit_limit=1))
    ledger.record(make_receipt(REQUESTER, PROVIDER, price=to_micro(2)), role="consumed")
    assert ledger.balance(REQUESTER.node_id_hex) == -to_micro(2)
    for _ in range(3):
        books.reserve(REQUESTER.node_id, to_micro(1))
    with pytest.raises(TaskRefusal):
        books.reserve(REQUESTER.node_id, to_micro(1))


def test_a_per_peer_limit_overrides_the_default(ledger: Ledger) -> None:
    config = EconomyConfig(credit_limit=1, credit={REQUESTER.node_id_hex: 5})
    books = _books_with_limit(ledger, config)
    for _ in range(5):
        books.reserve(REQUESTER.node_id, to_micro(1))
    with pytest.raises(TaskRefusal, match="you owe 5 of 5 credits"):
        books.reserve(REQUESTER.node_id, to_micro(1))
    books.reserve(MALLORY.node_id, to_micro(1))
    with pytest.raises(TaskRefusal, match="you owe 1 of 1 credits"):
        books.reserve(MALLORY.node_id, to_micro(1))


# ------------------------------------------------------------------------ settlement


class Pair:
    """Two nodes' books and settlement desks, trading with each other."""

    def __init__(self) -> None:
        self.a_id, self.b_id = PROVIDER, REQUESTER
        self.a, self.b = _books(), _books()
        nonces = (bytes([n]) * 16 for n in itertools.count(1))
        self.a_desk = SettlementDesk(self.a_id, self.a, lambda _: next(nonces))
        self.b_desk = SettlementDesk(self.b_id, self.b, lambda _: next(nonces))

    def a_serves_b(self, price: float, outcome: str = "completed") -> Receipt:
        return trade(self.a, self.b, self.a_id, self.b_id, price, outcome=outcome)

    def b_serves_a(self, price: float, outcome: str = "completed") -> Receipt:
        return trade(self.b, self.a, self.b_id, self.a_id, price, outcome=outcome)

    def a_settles(self) -> Statement:
        proposal = self.a_desk.propose(self.b_id.node_id)
        assert proposal is not None
        reply = self.b_desk.answer(self.a_id.public_key, b"\x00" * 16, proposal)
        self.a_desk.conclude(proposal, reply, self.b_id.public_key)
        return proposal.statement

    @property
    def a_view(self) -> int:
        return self.a.balance(self.b_id.node_id_hex)

    @property
    def b_view(self) -> int:
        return self.b.balance(self.a_id.node_id_hex)


def test_nothing_owed_proposes_nothing() -> None:
    pair = Pair()
    assert pair.a_desk.propose(pair.b_id.node_id) is None
    pair.a_serves_b(2, outcome="failed")
    assert pair.a_desk.propose(pair.b_id.node_id) is None
    pair.a_serves_b(2)
    pair.b_serves_a(2)
    assert pair.a_desk.propose(pair.b_id.node_id) is None  # nets to zero


@pytest.mark.parametrize("proposer", ["creditor", "debtor"])
def test_mutual_balances_net_and_settle_on_both_sides(proposer: str) -> None:
    pair = Pair()
    for _ in range(3):
        pair.a_serves_b(2)  # B owes A 6
    pair.a_serves_b(2, outcome="timeout")
    for _ in range(2):
        pair.b_serves_a(1.25)  # A owes B 2.5
    assert pair.a_view == to_micro(3.5) == -pair.b_view
    if proposer == "creditor":
        statement = pair.a_settles()
    else:
        pair.a, pair.b, pair.a_desk, pair.b_desk = pair.b, pair.a, pair.b_desk, pair.a_desk
        pair.a_id, pair.b_id = pair.b_id, pair.a_id
        statement = pair.a_settles()
    assert (statement.creditor, statement.debtor) == (PROVIDER.node_id, REQUESTER.node_id)
    assert statement.amount == to_micro(3.5) and statement.count == 5
    assert pair.a_view == pair.b_view == 0
    [on_a], [on_b] = pair.a.settlements(), pair.b.settlements()
    assert on_a["id"] == on_b["id"] == statement.id.hex()
    assert on_a["amount"] == -on_b["amount"] and abs(on_a["amount"]) == 3.5
    for books in (pair.a, pair.b):
        assert books.unsettled(pair.b_id.node_id_hex if books is pair.a
                               else pair.a_id.node_id_hex) == []
        assert books_problems(books.store) == []
    assert pair.a_desk.propose(pair.b_id.node_id) is None


def test_the_totals_a_ledger_keeps_match_the_books_after_every_kind_of_write() -> None:
    """Totals are read once and then kept up to date by each write (the cockpit asks for
    them every few seconds); they must always equal a fresh read of the database."""
    pair = Pair()
    for books in (pair.a, pair.b):
        assert books.totals() == {"unbalanced_transactions": 0}  # read (and kept) from here

    def agree() -> None:
        for books in (pair.a, pair.b):
            assert books.totals() == Ledger(books.store, Clock()).totals()

    pair.a_serves_b(2)
    pair.a_serves_b(2, outcome="failed")
    pair.b_serves_a(1.25)
    agree()
    assert pair.a.totals()["outstanding"] == to_micro(0.75)
    pair.a_settles()
    agree()
    assert pair.a.totals()["settled"] == to_micro(0.75)
    late = pair.a_serves_b(3)
    voided = pair.a.void([late.id], peer=pair.b_id.node_id_hex, before=float("inf"))
    assert voided == [late.id]
    agree()
    assert pair.a.totals()["outstanding"] == 0


def test_books_that_differ_are_refused_with_both_views_and_nothing_booked() -> None:
    pair = Pair()
    gone = pair.a_serves_b(2)
    pair.a_serves_b(2)
    pair.a_serves_b(2)
    with pair.b.store.transaction():  # B "loses" a receipt and its ledger rows
        pair.b.store.execute("DELETE FROM receipts WHERE id = ?", (gone.id,))
        pair.b.store.execute("DELETE FROM ledger WHERE txn = ?", (gone.id,))
    proposal = pair.a_desk.propose(pair.b_id.node_id)
    assert proposal is not None
    reply = pair.b_desk.answer(pair.a_id.public_key, b"\x00" * 16, proposal)
    assert not reply.ok and (reply.amount, reply.count) == (-to_micro(4), 2)
    with pytest.raises(SettlementRefused) as refused:
        pair.a_desk.conclude(proposal, reply, pair.b_id.public_key)
    assert str(refused.value) == (
        "the peer refused the settlement: books differ: we see 4 credits over 2 receipts,"
        " you proposed 6 over 3"
    )
    assert pair.a.settlements() == pair.b.settlements() == []
    assert (pair.a_view, pair.b_view) == (to_micro(6), -to_micro(4))


def test_a_proposal_with_the_sides_swapped_is_refused() -> None:
    pair = Pair()
    pair.a_serves_b(2)  # B owes A 2; A claims A owes B 2
    honest = pair.a_desk.propose(pair.b_id.node_id)
    assert honest is not None
    s = honest.statement
    flipped = Statement(s.id, s.debtor, s.creditor, s.amount, s.receipts, s.count)
    proposal = SettlePropose(flipped, PROVIDER.sign(flipped.encode()))
    reply = pair.b_desk.answer(PROVIDER.public_key, b"\x00" * 16, proposal)
    assert not reply.ok and "books differ" in reply.why
    assert pair.b.settlements() == []


def test_a_proposal_not_between_us_or_badly_signed_is_refused() -> None:
    pair = Pair()
    pair.a_serves_b(2)
    proposal = pair.a_desk.propose(pair.b_id.node_id)
    assert proposal is not None
    reply = pair.b_desk.answer(MALLORY.public_key, b"\x00" * 16, proposal)
    assert not reply.ok and reply.why == "the statement is not between us"
    forged = SettlePropose(proposal.statement, MALLORY.sign(proposal.statement.encode()))
    with pytest.raises(InvalidReceipt, match="signature does not verify"):
        pair.b_desk.answer(PROVIDER.public_key, b"\x00" * 16, forged)
    assert pair.b.settlements() == []


def test_a_forged_countersignature_is_not_booked() -> None:
    pair = Pair()
    pair.a_serves_b(2)
    proposal = pair.a_desk.propose(pair.b_id.node_id)
    assert proposal is not None
    reply = pair.b_desk.answer(PROVIDER.public_key, b"\x00" * 16, proposal)
    with pytest.raises(InvalidReceipt):
        pair.a_desk.conclude(proposal, reply, MALLORY.public_key)
    assert pair.a.settlements() == []


def test_a_task_finishing_while_a_settlement_is_in_flight_does_not_split_the_books() -> None:
    """Each side books exactly the receipts the statement hashed, not whatever is
    unsettled when the countersignature comes back."""
    pair = Pair()
    pair.a_serves_b(2)
    proposal = pair.a_desk.propose(pair.b_id.node_id)
    assert proposal is not None
    reply = pair.b_desk.answer(pair.a_id.public_key, b"\x00" * 16, proposal)
    assert reply.ok and len(pair.b.settlements()) == 1
    pair.a_serves_b(3)  # a task completes while the countersignature is on its way back
    pair.a_desk.conclude(proposal, reply, pair.b_id.public_key)
    assert len(pair.a.settlements()) == 1
    assert pair.a_view == to_micro(3) == -pair.b_view


@pytest.mark.parametrize(
    "change",
    [{"amount": 0}, {"amount": -5}, {"cr": REQUESTER.node_id}, {"id": b"\x01" * 15},
     {"count": -1}, {"receipts": b""}, {"amount": 1.5}, {"memo": "extra"}],
    ids=["zero", "negative", "self-settlement", "short-id", "negative-count",
         "no-receipts-hash", "float-amount", "extra-field"],
)
def test_a_statement_on_the_wire_is_validated(change: dict[str, Any]) -> None:
    good = Statement(b"\x01" * 16, PROVIDER.node_id, REQUESTER.node_id, 5, receipts_hash([]), 0)
    assert Statement.from_wire(good.to_wire()) == good
    with pytest.raises(InvalidReceipt):
        Statement.from_wire(good.to_wire() | change)
    with pytest.raises(InvalidReceipt, match="incomplete"):
        Statement.from_wire({"id": b"\x01" * 16})


def test_the_receipts_hash_ignores_order() -> None:
    ids = [make_receipt(task=bytes([i]) * 16).id for i in range(3)]
    assert receipts_hash(ids) == receipts_hash(reversed(ids)) != receipts_hash(ids[:2])


# ------------------------------------------------------------------------ reputation


def test_the_wilson_bound_rewards_evidence() -> None:
    assert wilson_lower_bound(0, 0) == 0.0
    assert wilson_lower_bound(1, 1) < wilson_lower_bound(10, 10) < wilson_lower_bound(50, 50)
    assert wilson_lower_bound(50, 50) < 1.0
    assert wilson_lower_bound(9, 10) > wilson_lower_bound(1, 10)


def test_one_success_scores_below_fifty_and_unknown_sits_between() -> None:
    one, fifty = reputation_score(1, 0, 0.0), reputation_score(50, 0, 0.0)
    unknown, failing = reputation_score(0, 0, 0.0), reputation_score(2, 8, 0.0)
    assert failing < unknown < one < fifty
    assert reputation_score(50, 0, 0.0) - reputation_score(50, 0, 10_000.0) == pytest.approx(0.1)
    assert reputation_score(50, 0, 60_000.0) == pytest.approx(reputation_score(50, 0, 10_000.0))


def test_rank_puts_the_best_first_and_strangers_in_the_middle() -> None:
    stats = {
        "good": ProviderStats("good", successes=50, latency_ms_total=50 * 20.0),
        "new": ProviderStats("new", successes=1),
        "bad": ProviderStats("bad", successes=2, failures=5, timeouts=3),
    }
    order = rank(["bad", "stranger", "new", "good"], stats, key=lambda p: p)
    assert order == ["good", "new", "stranger", "bad"]
    assert stats["bad"].calls == 10 and stats["good"].mean_latency_ms == 20.0


def test_observations_accumulate_per_provider(ledger: Ledger) -> None:
    clock = ledger.clock
    assert isinstance(clock, Clock)
    ledger.observe("aa", "completed", 100.0)
    ledger.observe("aa", "completed", 300.0)
    ledger.observe("aa", "failed", 999.0)  # latency only counts for successes
    clock.now += 5
    ledger.observe("aa", "timeout")
    ledger.observe("bb", "failed")
    stats = ledger.reputation()
    assert stats["aa"] == ProviderStats("aa", 2, 1, 1, 400.0, clock.now)
    assert stats["aa"].mean_latency_ms == 200.0
    assert stats["bb"].score < stats["aa"].score


# ------------------------------------------------------------------------ demand


def test_demand_counts_each_name_with_first_and_last_seen(ledger: Ledger) -> None:
    clock = ledger.clock
    assert isinstance(clock, Clock)
    start = clock.now
    ledger.count_demand("skill", "translate")
    clock.now += 10
    ledger.count_demand("tag", "gpu")
    clock.now += 10
    ledger.count_demand("skill", "translate")
    ledger.count_demand("tag", "translate")  # a tag and a skill of one name are apart
    rows = ledger.demand()
    assert rows[0] == {"kind": "skill", "name": "translate", "count": 2,
                       "first_seen": start, "last_seen": start + 20}
    assert [(r["kind"], r["name"], r["count"]) for r in rows[1:]] == [
        ("tag", "translate", 1), ("tag", "gpu", 1)]  # equal counts: most recent first
    assert ledger.demand(limit=1) == rows[:1]


def test_demand_keeps_what_many_ask_for_through_a_flood_of_names(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "MAX_DEMAND", 20)
    clock = ledger.clock
    assert isinstance(clock, Clock)
    for _ in range(3):
        ledger.count_demand("skill", "translate")
    for i in range(500):  # one-off names, as anyone can send
        clock.now += 1
        ledger.count_demand("skill", f"junk-{i}")
        assert len(ledger.demand()) <= 20
    rows = {(r["name"], r["count"]) for r in ledger.demand()}
    assert ("translate", 3) in rows
    assert ("junk-499", 1) in rows  # the newest is kept
    ledger.count_demand("skill", "junk-499")
    assert ("junk-499", 2) in {(r["name"], r["count"]) for r in ledger.demand()}
    # The count of rows survives a fresh ledger over the same store.
    fresh = Ledger(ledger.store, clock)
    fresh.count_demand("tag", "new")
    assert len(fresh.demand()) <= 20


# ------------------------------------------------------------------------ voiding


def test_void_reverses_a_provided_charge_older_than_the_cutoff(store: Store) -> None:
    clock = Clock()
    ledger = Ledger(store, clock)
    old, young = make_receipt(task=b"\x0a" * 16), make_receipt(task=b"\x0b" * 16)
    ledger.record(old, role="provided")
    clock.now += 300
    ledger.record(young, role="provided")
    peer = REQUESTER.node_id_hex
    assert ledger.balance(peer) == 2 * PRICE

    voided = ledger.void([old.id, young.id], peer=peer, before=clock.now - 120)
    assert voided == [old.id]  # the young one may still be on its way
    assert ledger.balance(peer) == PRICE
    assert ledger.unsettled(peer) == [young.id]
    assert books_problems(store) == []
    assert ledger.void([old.id], peer=peer, before=clock.now) == []  # once only
    assert ledger.balance(peer) == PRICE


def test_void_never_touches_what_we_consumed_or_another_peers_receipts(store: Store) -> None:
    clock = Clock()
    ledger = Ledger(store, clock)
    consumed = make_receipt(task=b"\x0c" * 16)
    ledger.record(consumed, role="consumed")
    provided = make_receipt(requester=MALLORY, task=b"\x0d" * 16)
    ledger.record(provided, role="provided")
    clock.now += 1000
    assert ledger.void([consumed.id], peer=PROVIDER.node_id_hex, before=clock.now) == []
    assert ledger.void([provided.id], peer=REQUESTER.node_id_hex, before=clock.now) == []
    assert ledger.unsettled(MALLORY.node_id_hex, role="provided") == [provided.id]
    assert ledger.unsettled(MALLORY.node_id_hex, role="consumed") == []
    assert books_problems(store) == []


@pytest.mark.parametrize("count", [0, 1, 3])
def test_reconcile_messages_round_trip(count: int) -> None:
    ids = [hashlib.sha256(bytes([i])).hexdigest() for i in range(count)]
    assert SettleReconcile.from_body(SettleReconcile(ids).to_body()).ids == ids
    reply = SettleReconciled(b"\x00" * 16, ids[:1], ids)
    assert SettleReconciled.from_body(reply.to_body()) == reply


@pytest.mark.parametrize("ids", [b"\x00" * 31, b"\x00" * 33, "text", 7])
def test_reconcile_ids_must_be_whole_32_byte_ids(ids: object) -> None:
    with pytest.raises(MistypedMessage):
        SettleReconcile.from_body({"ids": ids})
    with pytest.raises(MistypedMessage):
        SettleReconciled.from_body({"re": b"\x00" * 16, "void": b"", "ids": ids})


def test_voided_charges_still_count_against_the_credit_limit(store: Store) -> None:
    """A requester that denied its receipts cannot have them voided and start over."""
    clock = Clock()
    ledger = Ledger(store, clock)
    books = _books_with_limit(ledger, EconomyConfig(credit_limit=3))
    receipts = [make_receipt(task=bytes([i]) * 16) for i in range(2)]
    books.book(receipts)
    clock.now += 1000
    peer = REQUESTER.node_id_hex
    assert ledger.void([r.id for r in receipts], peer=peer, before=clock.now) != []
    assert ledger.balance(peer) == 0 and ledger.voided(peer) == 2 * PRICE
    with pytest.raises(TaskRefusal, match="you owe 3 .3 of it for results you said you never"):
        books.reserve(REQUESTER.node_id, to_micro(0.5))
    assert Ledger(store, clock).voided(peer) == 2 * PRICE  # from the database, not a cache


def test_reconcile_voids_nothing_when_the_other_list_may_be_cut_short(
    store: Store, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import knarr.node.settlement as settlement

    clock = Clock()
    ledger = Ledger(store, clock)
    receipt = make_receipt(task=b"\x0e" * 16)
    ledger.record(receipt, role="provided")
    clock.now += 1000
    desk = SettlementDesk(PROVIDER, ledger, clock=clock)
    monkeypatch.setattr(settlement, "MAX_RECONCILE_IDS", 2)
    assert desk.reconcile(REQUESTER.node_id, ["00" * 32, "11" * 32]) == []
    assert desk.reconcile(REQUESTER.node_id, ["00" * 32]) == [receipt.id]
