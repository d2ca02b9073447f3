"""One small SQL surface over PostgreSQL (psycopg) and SQLite, for the read models.

Statements are written once with `?` placeholders and portable SQL (upserts with
ON CONFLICT work on both); only the connection handling differs.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from psycopg_pool import ConnectionPool


class Cursor(Protocol):
    # Rows the last statement changed; -1 where not known yet (PostgreSQL in pipeline mode).
    rowcount: int

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Database(Protocol):
    dialect: str

    def transaction(self, *, lock: bool = False) -> Any: ...
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def close(self) -> None: ...


class _PgCursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cursor.execute(sql.replace("?", "%s"), params)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    @property
    def rowcount(self) -> int:
        # Never known here: in pipeline mode psycopg's count is -1 until results are fetched,
        # and may then be an earlier statement's (one cursor serves the whole transaction).
        return -1


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 4, schema: str | None = None, session_options: str = "") -> None:
        """`schema`: where unqualified table names resolve (a rebuild's staging tables).
        `session_options`: settings every session starts with, as libpq's `options` spells them
        (the composition root passes commands.postgres_store's: a lost client's session ends,
        and with it any lock it held)."""
        self.url = url
        self.session_options = session_options
        kwargs: dict[str, Any] = {"connect_timeout": 5}
        options = [session_options] if session_options else []
        if schema is not None:
            options.append(f"-c search_path={schema}")
        if options:
            kwargs["options"] = " ".join(options)
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=True, kwargs=kwargs)

    @contextmanager
    def transaction(self, *, lock: bool = False) -> Iterator[Cursor]:
        # Pipeline mode: statements go out without waiting for each answer (a projection
        # applies one statement per event); a fetch waits only for what it needs.
        with self._pool.connection() as conn, conn.transaction(), conn.pipeline(), conn.cursor() as cursor:
            yield _PgCursor(cursor)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._pool.connection() as conn, conn.cursor() as cursor:
            cursor.execute(sql.replace("?", "%s"), params)
            return cursor.fetchall()

    def close(self) -> None:
        self._pool.close()


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: Path, writer_lock: threading.Lock | None = None) -> None:
        """`writer_lock`: the lock every writer of this file in the process takes (the event
        store's too, commands.sqlite_store), so that two writers never meet inside SQLite,
        whose busy handler sleeps instead of waking the waiter."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by worker threads, serialised by a lock: SQLite has one
        # writer anyway, and readers here are short.
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._lock = threading.Lock()
        self._writer_lock = writer_lock or threading.Lock()

    @contextmanager
    def transaction(self, *, lock: bool = False) -> Iterator[Cursor]:
        # The writer lock first, then the connection: a reader holding the connection never
        # waits for a writer, so the two locks are never taken in the other order.
        with self._writer_lock, self._lock:
            cursor = self._conn.cursor()
            cursor.execute("BEGIN IMMEDIATE" if lock else "BEGIN")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self._conn.close()


def open_database(database_url: str, *, pool_size: int = 4, writer_lock: threading.Lock | None = None,
                  session_options: str = "") -> Database:
    """`writer_lock`: SQLite only, see SqliteDatabase; `session_options`: PostgreSQL only."""
    if database_url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(database_url, pool_size=pool_size, session_options=session_options)
    if database_url.startswith("sqlite:///"):
        return SqliteDatabase(Path(database_url.removeprefix("sqlite:///")), writer_lock)
    raise ValueError(f"unsupported database URL {database_url!r}")
