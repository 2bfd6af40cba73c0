"""The node's one SQLite file: WAL mode, a schema version and forward-only migrations.

Every module that persists something owns its tables through a migration here, so the
schema history of a database is readable in one list.

The write-ahead log is copied back into the database (checkpointed) mostly by a thread of
the store's own, not inside whichever commit happens to cross SQLite's threshold: that
copy ends in an fsync, and the commit runs on the node's event loop. The log can only
start over once a checkpoint has caught up with every commit, which a background
checkpoint never does while commits keep coming; so past :data:`INLINE_PAGES` the
writer checkpoints the few pages left itself, between two transactions.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import apsw

from knarr.errors import StorageError

log = logging.getLogger(__name__)

CHECKPOINT_PAGES = 1000
"""Wake the checkpoint thread for every this many new pages of log (SQLite's own
threshold for checkpointing)."""
INLINE_PAGES = 4 * CHECKPOINT_PAGES
"""Past this many pages the writer checkpoints after its commit, so the log starts over
(the thread has copied most of it by then) and stays bounded (~16 MiB)."""

# Each entry upgrades the schema by one version; never edit a released entry, append.
MIGRATIONS: tuple[str, ...] = (
    # 1: identity and settings, the persisted routing table, our own announced skills.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE peers (
        node_id   BLOB PRIMARY KEY,
        host      TEXT NOT NULL,
        port      INTEGER NOT NULL,
        last_seen REAL NOT NULL
    );
    CREATE TABLE announced (
        name   TEXT PRIMARY KEY,
        seq    INTEGER NOT NULL,
        record BLOB NOT NULL
    );
    """,
    # 2: the economy: receipts, double-entry ledger, settlements, reputation, demand.
    """
    CREATE TABLE receipts (
        id         TEXT PRIMARY KEY,
        role       TEXT NOT NULL CHECK (role IN ('provided', 'consumed')),
        peer       TEXT NOT NULL,
        skill      TEXT NOT NULL,
        price      INTEGER NOT NULL,
        charged    INTEGER NOT NULL,
        outcome    TEXT NOT NULL,
        duration   INTEGER NOT NULL,
        created    REAL NOT NULL,
        settlement TEXT,
        raw        BLOB NOT NULL
    );
    CREATE INDEX receipts_peer ON receipts(peer, settlement);
    CREATE TABLE ledger (
        txn     TEXT NOT NULL,
        account TEXT NOT NULL,
        amount  INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX ledger_account ON ledger(account);
    CREATE INDEX ledger_txn ON ledger(txn);
    CREATE TABLE settlements (
        id        TEXT PRIMARY KEY,
        peer      TEXT NOT NULL,
        amount    INTEGER NOT NULL,
        receipts  BLOB NOT NULL,
        count     INTEGER NOT NULL,
        statement BLOB NOT NULL,
        our_sig   BLOB NOT NULL,
        their_sig BLOB NOT NULL,
        created   REAL NOT NULL
    );
    CREATE TABLE reputation (
        provider  TEXT PRIMARY KEY,
        successes INTEGER NOT NULL DEFAULT 0,
        failures  INTEGER NOT NULL DEFAULT 0,
        timeouts  INTEGER NOT NULL DEFAULT 0,
        latency   REAL NOT NULL DEFAULT 0,
        last_seen REAL NOT NULL
    );
    CREATE TABLE demand (
        kind       TEXT NOT NULL,
        name       TEXT NOT NULL,
        count      INTEGER NOT NULL,
        first_seen REAL NOT NULL,
        last_seen  REAL NOT NULL,
        PRIMARY KEY (kind, name)
    );
    """,
    # 3: a journal of what the operator should see later: recipe firings, watchman events.
    """
    CREATE TABLE journal (
        id    INTEGER PRIMARY KEY AUTOINCREMENT,
        kind  TEXT NOT NULL,
        time  REAL NOT NULL,
        event TEXT NOT NULL,
        data  TEXT NOT NULL
    );
    CREATE INDEX journal_kind ON journal(kind, id);
    """,
    # 4: agent mail: an outbox retried until acknowledged, and an inbox deduplicated by id.
    """
    CREATE TABLE mail_out (
        id         TEXT PRIMARY KEY,
        recipient  TEXT NOT NULL,
        type       TEXT NOT NULL,
        body       TEXT NOT NULL,
        created    REAL NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        next_try   REAL NOT NULL,
        delivered  REAL,
        last_error TEXT
    );
    CREATE INDEX mail_out_due ON mail_out(delivered, next_try);
    CREATE TABLE mail_in (
        id       TEXT NOT NULL,
        sender   TEXT NOT NULL,
        type     TEXT NOT NULL,
        body     TEXT NOT NULL,
        sent     REAL NOT NULL,
        received REAL NOT NULL,
        PRIMARY KEY (sender, id)
    );
    """,
    # 5: no index on ledger.txn. Every booked receipt put two entries at random places in
    # it (txn is the receipt's hash), the largest write cost of a served task once the
    # books outgrew the page cache; its one reader, the balance audit in totals(), runs
    # once per process now (the Ledger keeps its totals up to date as it writes).
    """
    DROP INDEX IF EXISTS ledger_txn;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


class Store:
    """One node database. ``path`` may be ``":memory:"`` for a throwaway node."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        """Open (creating and migrating) a node database. With ``readonly``, open an
        existing one for reading only, beside a running node, without changing it."""
        self.path = os.fspath(path)
        self._checkpointer: _Checkpointer | None = None
        self._lock_fd: int | None = None
        if readonly and (self.path == ":memory:" or not os.path.isfile(self.path)):
            raise StorageError(f"{self.path}: no node database here (start a node with "
                               "`knarr serve`, or pass --storage)")
        if not readonly and self.path != ":memory:":
            self._make_private()
        try:
            flags = apsw.SQLITE_OPEN_READONLY if readonly else (
                apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
            )
            self._db = apsw.Connection(self.path, flags=flags)
            self._db.set_busy_timeout(5000)
            if readonly:
                self._check_readable()
                return
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._checkpointer = _Checkpointer(self.path)
                # Replaces SQLite's automatic checkpoint (which runs inside the commit).
                self._db.set_wal_hook(self._checkpointer.hook)
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except apsw.Error as exc:
            raise StorageError(f"{self.path}: cannot open the node database: {exc}") from exc

    def _make_private(self) -> None:
        """Create the database readable by its owner only, or tighten one that is not:
        it holds the node's signing key. SQLite gives the log and shared-memory files
        the database's mode when it creates them; ones left by an earlier run are
        tightened here too."""
        try:
            os.close(os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot open the node database: {exc}") from exc
        for name in (self.path, self.path + "-wal", self.path + "-shm"):
            try:
                mode = stat.S_IMODE(os.stat(name).st_mode)
                if mode & 0o077:
                    os.chmod(name, mode & 0o700)
                    log.debug("%s: mode %o tightened to %o", name, mode, mode & 0o700)
            except FileNotFoundError:
                pass
            except OSError as exc:  # not ours to change
                log.warning("%s: cannot make it private to its owner: %s", name, exc)

    def claim(self) -> None:
        """Hold this database for one running node until :meth:`close`.

        An advisory lock on ``PATH.lock``, which the system drops when the process dies;
        raises :class:`StorageError` if another node holds it. Readers and short-lived
        tools open the database without claiming it."""
        if self.path == ":memory:" or self._lock_fd is not None:
            return
        lock_path = self.path + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"{lock_path}: cannot create the node's lock file: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise StorageError(
                f"{self.path} is in use by another knarr node (pid {holder or '?'}) running in "
                f"{os.path.dirname(os.path.abspath(self.path))}; stop that node first, "
                "or start this one in another folder"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"{lock_path}: cannot lock the node database: {exc}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _check_readable(self) -> None:
        version = self.schema_version
        if version == 0:
            raise StorageError(f"{self.path}: not a knarr node database")
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path}: database schema version {version} is newer than this knarr "
                f"understands ({SCHEMA_VERSION}); upgrade knarr"
            )
        if version < SCHEMA_VERSION:
            raise StorageError(
                f"{self.path}: database schema version {version} is older than this knarr's "
                f"({SCHEMA_VERSION}); start the node once to upgrade it"
            )

    @property
    def schema_version(self) -> int:
        value = self._db.execute("PRAGMA user_version").fetchone()
        return int(value[0]) if value else 0

    def _migrate(self) -> None:
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path}: database schema version {current} is newer than this knarr "
                f"understands ({SCHEMA_VERSION}); upgrade knarr"
            )
        for version in range(current, SCHEMA_VERSION):
            with self._db:
                self._db.execute(MIGRATIONS[version])
                self._db.execute(f"PRAGMA user_version={version + 1}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Store]:
        """All statements inside commit together or not at all."""
        with self._db:
            yield self
        self._after_write()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows = list(self._db.execute(sql, params))
        self._after_write()
        return rows

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    def _after_write(self) -> None:
        """Checkpoint here if the log has passed :data:`INLINE_PAGES`, once no
        transaction is open (an inner one may just have ended inside an outer one)."""
        checkpointer = self._checkpointer
        if checkpointer is None or not checkpointer.inline_due or self._db.in_transaction:
            return
        checkpointer.inline_due = False
        try:
            self._db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
            checkpointer.inline += 1
        except apsw.BusyError:
            pass  # the thread is checkpointing right now; the next commit asks again

    def changes(self) -> int:
        """Rows changed by the last statement (0 after an ``INSERT OR IGNORE`` that
        found its key taken)."""
        return int(self._db.changes())

    def get_meta(self, key: str) -> bytes | None:
        rows = self.execute("SELECT value FROM meta WHERE key = ?", (key,))
        if not rows:
            return None
        if not isinstance(rows[0][0], bytes):
            raise StorageError(f"{self.path}: meta value {key!r} is corrupt (not a blob)")
        return rows[0][0]

    def set_meta(self, key: str, value: bytes) -> None:
        self.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @property
    def checkpoints(self) -> tuple[int, int]:
        """Checkpoints made so far by the store's thread and by the writer itself
        (``(0, 0)`` for an in-memory or read-only store)."""
        if self._checkpointer is None:
            return (0, 0)
        return (self._checkpointer.done, self._checkpointer.inline)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self._db.close()  # the last connection out checkpoints what is left
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # after the database is closed: the next node may open it
            self._lock_fd = None


class _Checkpointer:
    """Checkpoints a database's write-ahead log on a thread with its own connection,
    started when the log first reaches :data:`CHECKPOINT_PAGES`. A PASSIVE checkpoint
    never blocks the writer; apsw releases the GIL while SQLite works."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._next = CHECKPOINT_PAGES
        self._pages = 0
        self.inline_due = False
        """Set when the log has passed :data:`INLINE_PAGES`: the writer's turn."""
        self.done = 0
        self.inline = 0

    def hook(self, _connection: apsw.Connection, _name: str, pages: int) -> int:
        """SQLite's WAL hook: called after every commit with the log's length in pages.
        Wakes the thread once per :data:`CHECKPOINT_PAGES` new pages, not on every commit
        past the mark (each wake costs the committing thread a GIL hand-over)."""
        if pages < self._pages:  # the log started over
            self._next = CHECKPOINT_PAGES
        self._pages = pages
        if pages >= INLINE_PAGES:
            self.inline_due = True
        if pages >= self._next and not self._stopping:
            self._next = pages + CHECKPOINT_PAGES
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="knarr-checkpoint", daemon=True
                )
                self._thread.start()
            self._wake.set()
        return int(apsw.SQLITE_OK)

    def _run(self) -> None:
        try:
            db = apsw.Connection(self._path, flags=apsw.SQLITE_OPEN_READWRITE)
            db.set_busy_timeout(5000)
        except apsw.Error as exc:
            log.warning("%s: cannot open a connection to checkpoint the log: %s", self._path, exc)
            return
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
                    self.done += 1
                except apsw.Error as exc:  # e.g. busy: the next commit past the mark retries
                    log.warning("%s: checkpoint failed: %s", self._path, exc)
        finally:
            db.close()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
