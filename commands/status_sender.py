"""Delivers the commit-status outbox (projections/status_outbox.py) to each repository's git
host, at least once (commands.outbound.OutboxSender): retried with backoff until the host
answers 2xx. The host keeps the newest status per (commit, context), so a repeat is harmless.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from commands.outbound import Outbound, Outbox, OutboxSender, Outcome
from commands.secrets import SecretBook
from domain.errors import DomainError
from domain.statuses import RunState, StatusKind, status_request


class DueStatus(Protocol):
    id: str
    run_id: str
    repository_id: str
    commit: str
    context: str
    state: str
    attempts: int


class StatusSender(OutboxSender):
    """Never gives up: the host must learn how the run ended."""

    def __init__(self, outbox: Outbox, book: SecretBook, outbound: Outbound, clock: Callable[[], datetime],
                 public_url: str, *, retry_seconds: float) -> None:
        super().__init__(outbox, outbound, clock, public_url, retry_seconds=retry_seconds)
        self.book = book

    def receiver(self, row: DueStatus) -> str:
        return row.repository_id

    async def deliver(self, row: DueStatus) -> Outcome:
        try:
            found = await asyncio.to_thread(self.book.status_target, row.repository_id)
        except DomainError as unavailable:
            return Outcome(False, f"not sent: {unavailable}")
        if found is None:
            return Outcome(True, "not sent: the repository has no status target now")
        token, target = found
        request = status_request(StatusKind(target.kind), target.api_url, target.project, token, row.commit,
                                 RunState(row.state), row.context, f"{self.public_url}/#/runs/{row.run_id}")
        return await self.outbound.post(request.url, request.headers, json=request.json)
