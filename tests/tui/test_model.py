"""The console's model: snapshots diffed into keyed row changes, events applied."""

from __future__ import annotations

from knarr.tui.model import (
    LEDGER_ROWS,
    PANEL_BY_ID,
    ConsoleModel,
    RowChange,
    matches,
    stale_after,
)

OWN = "aa" * 32
PEER = "bb" * 32


def peer(node_id: str, rtt: float = 1.0) -> dict[str, object]:
    return {"node_id": node_id, "host": "127.0.0.1", "port": 9000, "bucket": 250,
            "last_seen": 100.0, "rtt_ms": rtt, "failures": 0}


def test_a_snapshot_changes_only_what_differs() -> None:
    model = ConsoleModel()
    model.sync_one("status", {"node_id": OWN})
    first = model.sync_one("peers", [peer(PEER), peer("cc" * 32)])
    assert [c.key for c in first] == [PEER, "cc" * 32]
    assert model.sync_one("peers", [peer(PEER), peer("cc" * 32)]) == []
    changed = model.sync_one("peers", [peer(PEER, rtt=2.5)])
    assert changed == [RowChange("peers", "cc" * 32, None),
                       RowChange("peers", PEER, model.rows["peers"][PEER])]
    assert model.rows["peers"][PEER]["rtt_ms"] == 2.5


def test_events_add_and_remove_rows() -> None:
    model = ConsoleModel()
    model.sync_one("status", {"node_id": OWN})
    added = model.apply("peer.added", {"node_id": PEER, "host": "10.0.0.2", "port": 9001,
                                       "bucket": 255}, at=50.0)
    assert added[0].row is not None and added[0].row["address"] == "10.0.0.2:9001"
    assert model.apply("peer.removed", {"node_id": PEER}, at=51.0) == [
        RowChange("peers", PEER, None)]
    assert [text for _, text in model.history[PEER].entries] == [
        "joined the routing table", "left the routing table"]


def test_receipts_become_signed_ledger_rows() -> None:
    model = ConsoleModel()
    receipt = {"id": "r1", "skill": "upper", "charged": 1.5, "price": 1.5,
               "requester": PEER, "provider": OWN, "outcome": "completed",
               "duration_ms": 3}
    [change] = model.apply("task.provided", receipt, at=10.0)
    assert change.row is not None
    assert (change.row["role"], change.row["peer"], change.row["amount"]) == (
        "provided", PEER, 1.5)
    [spent] = model.apply("task.consumed", {**receipt, "id": "r2", "requester": OWN,
                                            "provider": PEER}, at=11.0)
    assert spent.row is not None and spent.row["amount"] == -1.5
    assert model.receipts_with(PEER)[0]["id"] == "r2"


def test_the_ledger_keeps_the_newest_receipts_as_a_refetch_would() -> None:
    model = ConsoleModel()
    old = [{"id": f"old{i}", "role": "provided", "peer": PEER, "charged": 1.0,
            "created": 1000.0 - i} for i in range(LEDGER_ROWS)]  # newest first, as served
    model.sync_one("ledger", {"receipts": old})
    receipt = {"id": "new", "charged": 1.0, "requester": PEER, "provider": OWN}
    changes = model.apply("task.provided", receipt, at=2000.0)
    oldest = f"old{LEDGER_ROWS - 1}"
    assert changes == [RowChange("ledger", "new", model.rows["ledger"]["new"]),
                       RowChange("ledger", oldest, None)]
    assert len(model.rows["ledger"]) == LEDGER_ROWS
    assert model.sync_one("ledger", {"receipts": [model.rows["ledger"]["new"], *old[:-1]]}
                          ) == []  # the re-fetch agrees: nothing to change


def test_demand_counts_up_and_snapshots_correct_it() -> None:
    model = ConsoleModel()
    model.apply("demand", {"kind": "skill", "name": "ocr"}, at=1.0)
    model.apply("demand", {"kind": "skill", "name": "ocr"}, at=2.0)
    assert model.rows["demand"]["skill:ocr"]["count"] == 2
    assert "demand" in stale_after("demand")
    model.sync_one("demand", [{"kind": "skill", "name": "ocr", "count": 3,
                               "first_seen": 1.0, "last_seen": 2.5}])
    assert model.rows["demand"]["skill:ocr"]["count"] == 3


def test_local_and_discovered_skills_merge_under_one_key() -> None:
    model = ConsoleModel()
    model.sync_one("status", {"node_id": OWN})
    model.sync_one("skills", {
        "local": [{"name": "echo", "visibility": "private", "price": 0.5, "tags": ["x"]}],
        "discovered": [{"name": "echo", "provider": OWN, "price": 0.5, "visibility": "public",
                        "host": "127.0.0.1", "port": 9000},
                       {"name": "echo", "provider": PEER, "price": 1.0}],
    })
    assert set(model.rows["skills"]) == {f"{OWN}/echo", f"{PEER}/echo"}
    mine = model.rows["skills"][f"{OWN}/echo"]
    assert mine["visibility"] == "private" and mine["local"] and mine["host"] == "127.0.0.1"
    assert [r["provider"] for r in model.providers_of("echo")] == [OWN, PEER]


def test_journal_rows_show_their_details() -> None:
    model = ConsoleModel()
    model.sync_one("watchman", [{"id": 7, "time": 5.0, "event": "restart",
                                 "attempt": 2, "reason": "exited"}])
    row = model.rows["watchman"]["7"]
    assert row["detail"] == "attempt=2 reason=exited"
    assert matches(PANEL_BY_ID["watchman"], row, "EXITED")
    assert not matches(PANEL_BY_ID["watchman"], row, "nothing")
