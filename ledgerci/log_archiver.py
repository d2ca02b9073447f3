"""Copies each ended attempt's log from the LOGS stream into the database archive.

It follows the event history like a projector (woken by published events, never polling on
the hot path) and runs in the projector's process. Reading from the live stream and writing
the archive are both repeatable, so a crash anywhere means some work is done twice, never lost.
"""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext

from commands.app import LedgerApp
from gateway.logs import read_live_log
from projections.log_archive import LogArchive, ended_attempts

PAGE = 200


class LogArchiver:
    def __init__(self, ledger: LedgerApp, js: JetStreamContext, archive: LogArchive) -> None:
        self.ledger = ledger
        self.js = js
        self.archive = archive

    async def archive_pending(self) -> int:
        """Archive the attempts ended in the next page of events; the number of events read."""
        position = await asyncio.to_thread(self.archive.position)
        events = await asyncio.to_thread(lambda: list(self.ledger.store.events_after(position, PAGE)))
        for job_id, attempt in ended_attempts(events):
            content = await read_live_log(self.js, job_id, attempt)
            await asyncio.to_thread(self.archive.put, job_id, attempt, content)
        if events:
            await asyncio.to_thread(self.archive.advance, events[-1][0])
        return len(events)
