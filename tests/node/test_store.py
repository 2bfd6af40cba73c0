"""The node database: WAL mode, versioned forward-only migrations, atomic transactions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from knarr.errors import StorageError
from knarr.node.store import MIGRATIONS, SCHEMA_VERSION, Store


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
