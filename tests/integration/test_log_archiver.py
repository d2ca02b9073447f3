"""The log archiver on a real SQLite read model: each ended attempt's log archived once (the
first copy wins), in one transaction per pass; its position saved with what it archived, and
a restarted archiver goes on from there. The live log is given as the LOGS stream would give
it (the archiver takes the reading function), so no NATS is needed to test what it writes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from projections.log_archive import PAGE, SAVE_POSITION_EVERY, LogArchive, LogArchiver
from projections.schema import create_read_model_tables
from projections.sql import Database, open_database

pytestmark = pytest.mark.integration


@dataclass
class JobSucceeded:  # matched by name, as the archiver matches the store's events
    job_id: str
    attempt: int


@dataclass
class JobStarted:
    job_id: str
    attempt: int


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(f"sqlite:///{tmp_path / 'read.db'}")
    create_read_model_tables(database)
    yield database
    database.close()


class History:
    def __init__(self) -> None:
        self.events: list[tuple[int, object]] = []
        self.reads: list[tuple[str, int]] = []
        self.live: dict[tuple[str, int], bytes] = {}

    def add(self, event: object, log: bytes | None = None) -> None:
        self.events.append((len(self.events) + 1, event))
        if log is not None:
            self.live[(event.job_id, event.attempt)] = log  # type: ignore[attr-defined]

    def events_after(self, position: int, limit: int) -> list[tuple[int, object]]:
        return [item for item in self.events if item[0] > position][:limit]

    async def read_live_log(self, job_id: str, attempt: int) -> bytes:
        self.reads.append((job_id, attempt))
        return self.live.get((job_id, attempt), b"")


async def drain(archiver: LogArchiver) -> None:
    while await archiver.archive_pending():
        pass


async def test_each_ended_attempt_is_archived_once_and_a_restart_goes_on_from_the_saved_position(db: Database):
    history = History()
    history.add(JobStarted("a", 1))
    history.add(JobSucceeded("a", 1), b"a's log\n")
    history.add(JobStarted("b", 1))
    archive = LogArchive(db)
    await drain(LogArchiver(archive, history.events_after, history.read_live_log))
    assert archive.get("a", 1) == b"a's log\n"
    assert archive.position() == 3  # saved with the log it archived, to the end of the page
    assert history.reads == [("a", 1)]

    # The live copy changes (it never does; this shows which copy the archive keeps), and a
    # restarted archiver reads on from the saved position: nothing is read or written twice.
    history.live[("a", 1)] = b"another copy\n"
    history.add(JobSucceeded("b", 1), b"b's log\n")
    await drain(LogArchiver(archive, history.events_after, history.read_live_log))
    assert history.reads == [("a", 1), ("b", 1)]
    assert (archive.get("a", 1), archive.get("b", 1)) == (b"a's log\n", b"b's log\n")

    # An archiver that starts from nothing (its position lost) archives again: the first copy stays.
    with db.transaction() as cursor:
        cursor.execute("DELETE FROM lci_log_archive_tracking")
    await drain(LogArchiver(archive, history.events_after, history.read_live_log))
    assert archive.get("a", 1) == b"a's log\n"
    assert archive.position() == 4


async def test_the_position_of_events_that_end_no_attempt_is_saved_only_now_and_then(db: Database):
    history = History()
    history.add(JobSucceeded("a", 1), b"log\n")
    for n in range(SAVE_POSITION_EVERY + PAGE):
        history.add(JobStarted(f"j{n}", 1))
    archive = LogArchive(db)
    archiver = LogArchiver(archive, history.events_after, history.read_live_log)
    assert await archiver.archive_pending() == PAGE
    assert archive.position() == PAGE  # the page ended an attempt
    while archive.position() == PAGE:
        assert await archiver.archive_pending() == PAGE
    # Saved once SAVE_POSITION_EVERY events past the last save were read, not on every page.
    assert archive.position() == PAGE + SAVE_POSITION_EVERY
    await drain(archiver)
    assert history.reads == [("a", 1)]
