"""Which scheduler replica is the admission leader: the one holding a PostgreSQL advisory lock.

The lock lives as long as the leader's own connection: a leader that dies (SIGKILL, a lost
host) drops the connection and with it the lock, and a standby, retrying every
STANDBY_RETRY_SECONDS (a cold path), takes over. A leader that is paused (SIGSTOP) keeps its
socket open, so its session also ends once idle for `session_seconds` (IDLE_SESSION_SECONDS
unless LEDGERCI_LEADER_SESSION_SECONDS says otherwise); a leader pings every third of that
while it lives. Before every release the leader confirms its connection:
one that broke means the lock may be someone else's, and the leader stops deciding.

On SQLite (the embedded default, one host) the lock is an exclusive `flock` on a file beside
the database: held while the process lives, released by the kernel when it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import threading
import time
from pathlib import Path
from typing import IO, Protocol

import psycopg

from domain.errors import DomainError

# Any fixed number, distinct from the migration lock's.
ADMISSION_LOCK_ID = 7_334_002
STANDBY_RETRY_SECONDS = 1.0
IDLE_SESSION_SECONDS = 30.0


class LeadershipLostError(DomainError):
    """The leader's lock connection broke: another replica may lead now."""


class Leadership(Protocol):
    async def acquire(self, stop: asyncio.Event) -> bool: ...  # False: stopped while waiting
    def confirm(self) -> None: ...  # raises LeadershipLostError
    def keep_alive(self) -> None: ...  # confirm, if not done lately
    def release(self) -> None: ...


class SoleLeadership:
    """One process, one scheduler: it leads (tests that drive a leader directly)."""

    async def acquire(self, stop: asyncio.Event) -> bool:
        return not stop.is_set()

    def confirm(self) -> None:
        pass

    def keep_alive(self) -> None:
        pass

    def release(self) -> None:
        pass


class FileLeadership(SoleLeadership):
    """An exclusive lock on a file: for schedulers sharing one host's SQLite store. The lock
    cannot be lost while the file stays open, so there is nothing to confirm."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    async def acquire(self, stop: asyncio.Event) -> bool:
        while not stop.is_set():
            if self._try_lock():
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STANDBY_RETRY_SECONDS)
        return False

    def _try_lock(self) -> bool:
        self._file = self._file or open(self.path, "ab")  # noqa: SIM115 - open while leading
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # and with it the lock
            self._file = None


class PostgresLeadership:
    def __init__(self, database_url: str, lock_id: int = ADMISSION_LOCK_ID,
                 session_seconds: float = IDLE_SESSION_SECONDS) -> None:
        self.database_url = database_url
        self.lock_id = lock_id
        self.session_seconds = session_seconds
        self.ping_every = session_seconds / 3
        self._conn: psycopg.Connection | None = None
        self._confirmed_at = 0.0
        # The leader's steps and its takeover's pinger use the connection from worker threads.
        self._lock = threading.Lock()

    async def acquire(self, stop: asyncio.Event) -> bool:
        while not stop.is_set():
            with contextlib.suppress(psycopg.Error, OSError):
                if await asyncio.to_thread(self._try_lock):
                    return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STANDBY_RETRY_SECONDS)
        return False

    def _try_lock(self) -> bool:
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(
                    self.database_url, autocommit=True, connect_timeout=5,
                    options=f"-c idle_session_timeout={round(self.session_seconds * 1000)}",
                    keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                )
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.lock_id,)).fetchone()
            held = bool(row and row[0])
            if held:
                self._confirmed_at = time.monotonic()
            return held

    def confirm(self) -> None:
        with self._lock:
            if self._conn is None:
                raise LeadershipLostError("not the leader")
            try:
                self._conn.execute("SELECT 1")
            except (psycopg.Error, OSError) as lost:
                self._close()
                raise LeadershipLostError(f"the leader's lock connection broke: {lost}") from None
            self._confirmed_at = time.monotonic()

    def keep_alive(self) -> None:
        if time.monotonic() - self._confirmed_at > self.ping_every:
            self.confirm()

    def release(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                self._conn.close()  # the lock goes with the session
            self._conn = None
