"""The archive of finished attempts' logs, and how far through the history the archiver got.

The archiver copies an attempt's log from the LOGS stream once an event says the attempt
ended, so the stream can expire while the log stays readable. Copying is idempotent (the first
copy of an attempt wins), so two archivers, or one that restarts halfway, never lose or change
a log; the position only saves work. The archiver follows the event history like a projector
(woken by published events, never polling on the hot path) and runs in the projector's process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from domain.job_events import ATTEMPT_ENDING_EVENTS
from projections.sql import Database

PAGE = 200
# Events read past the saved position, at most, before it is saved without a log to archive.
SAVE_POSITION_EVERY = 1000
# Log bytes held at most before they are archived (a log may be 16 MiB: a page must not hold hundreds).
RECORD_BYTES = 32 * 1024**2

# The events after which nothing more is logged for an attempt.
# By name: the projector reads events decoded from the store, the archiver's wake-ups by subject.
ATTEMPT_ENDING_EVENT_NAMES = frozenset(event.__name__ for event in ATTEMPT_ENDING_EVENTS)


class LogArchive:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, job_id: str, attempt: int) -> bytes | None:
        rows = self.db.query("SELECT content FROM lci_job_logs WHERE job_id = ? AND attempt = ?", (job_id, attempt))
        return bytes(rows[0][0]) if rows else None

    def position(self) -> int:
        rows = self.db.query("SELECT position FROM lci_log_archive_tracking WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    def record(self, logs: list[tuple[str, int, bytes]], position: int) -> None:
        """Archive (job id, attempt, content) logs (the first copy of an attempt wins) and move
        the position to `position`, in one transaction."""
        archived_at = datetime.now(UTC).isoformat()
        with self.db.transaction() as cursor:
            for job_id, attempt, content in logs:
                cursor.execute(
                    "INSERT INTO lci_job_logs (job_id, attempt, content, archived_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (job_id, attempt) DO NOTHING",
                    (job_id, attempt, content, archived_at),
                )
            cursor.execute(
                "INSERT INTO lci_log_archive_tracking (id, position) VALUES (1, ?) ON CONFLICT (id) "
                "DO UPDATE SET position = excluded.position "
                "WHERE lci_log_archive_tracking.position < excluded.position",
                (position,),
            )


def ended_attempts(events: Iterable[tuple[int, Any]]) -> list[tuple[str, int]]:
    """(job id, attempt) of every attempt that ended in these events, in order."""
    ended = []
    for _, event in events:
        if type(event).__name__ in ATTEMPT_ENDING_EVENT_NAMES and getattr(event, "attempt", 0) >= 1:
            ended.append((str(event.job_id), int(event.attempt)))
    return ended


class LogArchiver:
    """Copies each ended attempt's log from the LOGS stream into the archive. Reading the live
    stream and writing the archive are both repeatable, so a crash anywhere means some work is
    done twice, never lost.

    The position is read once and then kept here; it is saved with the logs a pass archives,
    or after SAVE_POSITION_EVERY events that ended no attempt: a write transaction per
    wake-up (one per saved event, under load) only to say that nothing ended would cost more
    than reading those events again after a restart."""

    def __init__(self, archive: LogArchive, events_after: Callable[[int, int], Iterable[tuple[int, Any]]],
                 read_live_log: Callable[[str, int], Awaitable[bytes]]) -> None:
        self.archive = archive
        self.events_after = events_after  # (position, limit) -> the events after it, in the global order
        self.read_live_log = read_live_log  # (job id, attempt) -> its log as the stream holds it
        self._position: int | None = None  # how far this archiver got (saved: at most that far)
        self._saved = 0

    async def archive_pending(self) -> int:
        """Archive the attempts ended in the next page of events; the number of events read."""
        if self._position is None:
            self._position = self._saved = await asyncio.to_thread(self.archive.position)
        position = self._position
        events = await asyncio.to_thread(lambda: list(self.events_after(position, PAGE)))
        if not events:
            return 0
        logs: list[tuple[str, int, bytes]] = []
        held = 0
        for job_id, attempt in ended_attempts(events):
            content = await self.read_live_log(job_id, attempt)
            logs.append((job_id, attempt, content))
            held += len(content)
            if held >= RECORD_BYTES:  # big logs: archived as they come, the position not moved yet
                await asyncio.to_thread(self.archive.record, logs, position)
                logs, held = [], 0
        reached = events[-1][0]
        if logs or reached - self._saved >= SAVE_POSITION_EVERY:
            await asyncio.to_thread(self.archive.record, logs, reached)
            self._saved = reached
        self._position = reached
        return len(events)
