"""The embedded event store (SQLite, `ledgerci dev`): one writer per file, writes queue.

SQLite has one writer per database file. eventsourcing's SQLite pool serialises its own
writers, but in `ledgerci dev` the read models write to the same file through another
connection, and two writers then meet inside SQLite, whose busy handler sleeps and retries
(1, 2, 5 … 100 ms) instead of waking the waiter. Worse, the pool made every request, readers
too, wait in one queue behind a writer that waits, and gave up after 5 s: a push answered 503
under four clients with no fault.

Here every writer of the file in this process takes one lock first (`writer_lock`; the read
models take the same one, handed to them by the composition root), so SQLite's busy handler
never runs within a process; readers never wait for writers (WAL), and a write waits for the
lock as long as it takes rather than failing: the caller's own deadline decides.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eventsourcing.sqlite import SQLiteConnection, SQLiteDatastore, SQLiteFactory

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()

# Connections kept open for readers (writers take turns on one): enough for every service of
# `ledgerci dev` reading at once without opening a connection per read.
POOL_SIZE = 8
# A request waits this long for a connection before the store counts as unavailable; a
# write waits for its turn on the writer lock without limit (the caller's deadline decides).
POOL_TIMEOUT_SECONDS = 60.0


def writer_lock(path: Path | str) -> threading.Lock:
    """The one lock every writer of this SQLite file in this process takes."""
    key = str(Path(path).absolute())
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


class OneWriterDatastore(SQLiteDatastore):
    """eventsourcing's SQLite datastore, its writes taken in turn under the file's lock."""

    def __init__(self, db_name: str, **kwargs: Any) -> None:
        super().__init__(db_name, **kwargs)
        self.writer_lock = writer_lock(db_name)

    @contextmanager
    def get_connection(self, *, commit: bool) -> Iterator[SQLiteConnection]:
        # No reader-writer interlocking in the pool (is_writer=None): a waiting writer holds
        # nobody else up; the file's lock alone orders the writers.
        if not commit:
            with self._pooled() as conn:
                yield conn
            return
        with self.writer_lock, self._pooled() as conn:
            yield conn

    @contextmanager
    def _pooled(self) -> Iterator[SQLiteConnection]:
        conn = self.pool.get_connection()
        try:
            yield conn
        finally:
            self.pool.put_connection(conn)


class OneWriterSQLiteFactory(SQLiteFactory):
    """PERSISTENCE_MODULE for the embedded store (commands.store.eventsourcing_env)."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        plain = self.datastore
        plain.close()
        self.datastore = OneWriterDatastore(
            plain.pool.db_name, lock_timeout=plain.pool.lock_timeout, pool_size=POOL_SIZE,
            max_overflow=POOL_SIZE, pool_timeout=POOL_TIMEOUT_SECONDS,
            single_row_tracking=plain.single_row_tracking, originator_id_type=plain.originator_id_type,
        )
