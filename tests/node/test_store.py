"""The node database: WAL mode, versioned forward-only migrations, atomic transactions."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from knarr.errors import StorageError
from knarr.node.store import CHECKPOINT_PAGES, INLINE_PAGES, MIGRATIONS, SCHEMA_VERSION, Store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "node.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


def tables(store: Store) -> set[str]:
    return {r[0] for r in store.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_file_database_uses_wal(store: Store) -> None:
    assert store.execute("PRAGMA journal_mode") == [("wal",)]


def test_the_schema_version_is_the_number_of_migrations(store: Store) -> None:
    assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    assert {"meta", "peers", "announced"} <= tables(store)


def test_an_in_memory_database_is_migrated_too() -> None:
    s = Store(":memory:")
    try:
        assert s.schema_version == len(MIGRATIONS)
        assert "meta" in tables(s)
    finally:
        s.close()


def test_reopening_is_idempotent_and_keeps_data(db_path: Path) -> None:
    first = Store(db_path)
    first.set_meta("greeting", b"hello")
    schema = first.execute("SELECT sql FROM sqlite_master ORDER BY name")
    first.close()

    for _ in range(2):
        again = Store(db_path)
        try:
            assert again.schema_version == len(MIGRATIONS)
            assert again.execute("SELECT sql FROM sqlite_master ORDER BY name") == schema
            assert again.get_meta("greeting") == b"hello"
        finally:
            again.close()


def test_meta_upserts(store: Store) -> None:
    assert store.get_meta("k") is None
    store.set_meta("k", b"1")
    store.set_meta("k", b"2")
    assert store.get_meta("k") == b"2"
    assert store.execute("SELECT count(*) FROM meta") == [(1,)]


def test_a_newer_database_is_refused_with_a_clear_message(db_path: Path) -> None:
    raw = apsw.Connection(str(db_path))
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    raw.close()
    with pytest.raises(StorageError) as info:
        Store(db_path)
    message = str(info.value)
    assert str(db_path) in message
    assert f"version {len(MIGRATIONS) + 1}" in message
    assert "upgrade knarr" in message


def test_a_file_that_is_not_a_database_is_a_storage_error(db_path: Path) -> None:
    db_path.write_bytes(b"this is not an SQLite database, just some text" * 100)
    with pytest.raises(StorageError, match="cannot open"):
        Store(db_path)


def test_a_transaction_commits_all_rows(store: Store) -> None:
    with store.transaction():
        store.executemany(
            "INSERT INTO peers(node_id, host, port, last_seen) VALUES(?, ?, ?, ?)",
            [(bytes([i]) * 32, "127.0.0.1", 9000 + i, 0.0) for i in range(5)],
        )
    assert store.execute("SELECT count(*) FROM peers") == [(5,)]


def test_a_transaction_rolls_back_on_exception(store: Store) -> None:
    store.set_meta("before", b"kept")
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction():
            store.executemany(
                "INSERT INTO peers(node_id, host, port, last_seen) VALUES(?, ?, ?, ?)",
                [(bytes([i]) * 32, "127.0.0.1", 9000 + i, 0.0) for i in range(5)],
            )
            store.set_meta("before", b"overwritten")
            assert store.execute("SELECT count(*) FROM peers") == [(5,)]
            raise RuntimeError("boom")
    assert store.execute("SELECT count(*) FROM peers") == [(0,)]
    assert store.get_meta("before") == b"kept"


def test_a_rolled_back_transaction_is_not_on_disk(db_path: Path) -> None:
    s = Store(db_path)
    with pytest.raises(RuntimeError):
        with s.transaction():
            s.set_meta("ghost", b"boo")
            raise RuntimeError("abort")
    s.close()
    again = Store(db_path)
    try:
        assert again.get_meta("ghost") is None
    finally:
        again.close()


def _wal_pages(db_path: Path) -> int:
    wal = db_path.with_name(db_path.name + "-wal")
    return wal.stat().st_size // 4096 if wal.exists() else 0


def test_the_log_is_checkpointed_off_the_committing_thread_and_stays_bounded(
    db_path: Path,
) -> None:
    """Commits never run the bulk of a checkpoint (and its fsync) themselves: the store's
    own thread copies the log back as it grows. Under a steady stream of commits that
    copy never catches up with the newest one, so past INLINE_PAGES the writer finishes
    the job between two transactions and the log starts over instead of growing."""
    store = Store(db_path)
    store.execute("CREATE TABLE filler(n INTEGER, pad BLOB)")
    rows = 0
    largest = 0
    while store.checkpoints[1] < 3:
        with store.transaction():
            store.executemany("INSERT INTO filler VALUES(?, ?)",
                              [(rows + i, bytes(2000)) for i in range(50)])
        rows += 50
        largest = max(largest, _wal_pages(db_path))
        assert rows < 400_000, f"no inline checkpoint after {rows} rows"
    background, inline = store.checkpoints
    assert background >= 1 and inline >= 3
    assert "knarr-checkpoint" in {t.name for t in threading.enumerate()}
    # Each inline checkpoint let the log start over: it never grew far past the mark.
    assert largest < 2 * INLINE_PAGES + 100
    store.close()
    assert "knarr-checkpoint" not in {t.name for t in threading.enumerate()}
    with contextlib.closing(Store(db_path)) as again:
        assert again.execute("SELECT COUNT(*), MAX(n) FROM filler")[0] == (rows, rows - 1)


def test_a_small_or_read_only_store_starts_no_checkpoint_thread(db_path: Path) -> None:
    Store(db_path).close()
    with contextlib.closing(Store(db_path)) as small, \
            contextlib.closing(Store(db_path, readonly=True)) as reader:
        small.set_meta("k", b"v")
        assert small.checkpoints == reader.checkpoints == (0, 0)
        assert _wal_pages(db_path) < CHECKPOINT_PAGES
    assert "knarr-checkpoint" not in {t.name for t in threading.enumerate()}


def test_upgrading_from_schema_4_drops_the_ledger_txn_index(db_path: Path) -> None:
    db = apsw.Connection(str(db_path))
    for version in range(4):
        db.execute(MIGRATIONS[version])
    db.execute("PRAGMA user_version=4")
    db.close()
    with contextlib.closing(Store(db_path)) as store:
        indexes = {r[0] for r in store.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "ledger_account" in indexes and "ledger_txn" not in indexes
        assert store.schema_version == SCHEMA_VERSION


def test_the_writer_checkpoints_only_once_no_transaction_is_open(db_path: Path) -> None:
    with contextlib.closing(Store(db_path)) as store:
        store.execute("CREATE TABLE t(n INTEGER)")
        assert store._checkpointer is not None
        with store.transaction():
            store._checkpointer.inline_due = True  # as the WAL hook sets it past the mark
            with store.transaction():
                store.execute("INSERT INTO t VALUES(1)")
            assert store.checkpoints == (0, 0)  # an inner transaction ended: not yet
        assert store.checkpoints == (0, 1)
        assert store.execute("SELECT n FROM t") == [(1,)]


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
def test_a_new_database_and_its_log_are_readable_by_the_owner_only(db_path: Path) -> None:
    s = Store(db_path)  # it will hold the node's signing key
    try:
        s.set_meta("greeting", b"hello")
        assert mode(db_path) == 0o600
        for suffix in ("-wal", "-shm"):
            assert mode(db_path.with_name(db_path.name + suffix)) == 0o600
    finally:
        s.close()


@pytest.mark.usefixtures("umask_022")
def test_an_existing_readable_database_and_leftover_log_are_tightened(db_path: Path) -> None:
    Store(db_path).close()
    wal = db_path.with_name(db_path.name + "-wal")
    wal.write_bytes(b"")  # left by a node that crashed
    for path in (db_path, wal):
        path.chmod(0o644)
    s = Store(db_path)
    try:
        assert mode(db_path) == mode(wal) == 0o600
    finally:
        s.close()


def test_a_claimed_database_is_refused_to_a_second_claim_until_closed(db_path: Path) -> None:
    first, second = Store(db_path), Store(db_path)
    try:
        first.claim()
        with pytest.raises(StorageError, match=rf"another knarr node \(pid {os.getpid()}\)"):
            second.claim()
        second.execute("SELECT count(*) FROM meta")  # reading beside the node still works
        first.close()
        second.claim()
    finally:
        first.close()
        second.close()
    assert mode(db_path.with_name(db_path.name + ".lock")) == 0o600
