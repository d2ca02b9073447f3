"""Delivers the commit-status outbox (projections/status_outbox.py) to each repository's git
host, at least once: a row is marked delivered only after the host answered 2xx, so a sender
killed mid-delivery sends it again when it restarts; a failure is tried again later, the wait
doubling up to a cap. The host keeps the newest status per (commit, context), so a repeat is
harmless.

Outbound requests never follow redirects and, unless the admin allows it
(LEDGERCI_OUTBOUND_ALLOW_PRIVATE), never go to a loopback, link-local or private address: a
tenant's status target must not reach into the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from commands.secrets import SecretBook
from domain.errors import DomainError
from domain.statuses import RunState, StatusKind, is_private, status_request

log = logging.getLogger(__name__)

MAX_BACKOFF_STEPS = 8  # the wait doubles up to 2**8 times the first


class DueStatus(Protocol):
    id: str
    run_id: str
    repository_id: str
    commit: str
    context: str
    state: str
    attempts: int


class Outbox(Protocol):
    def due(self, now: datetime, limit: int = 50) -> list: ...
    def delivered(self, row_id: str, at: datetime, result: str) -> None: ...
    def failed(self, row_id: str, retry_at: datetime, result: str) -> None: ...


class Refused(Exception):
    """The target may not be called (a private address); tried again later, it stays refused."""


class StatusSender:
    def __init__(self, outbox: Outbox, book: SecretBook, clock: Callable[[], datetime], public_url: str, *,
                 retry_seconds: float, allow_private: bool) -> None:
        self.outbox = outbox
        self.book = book
        self.clock = clock
        self.public_url = public_url.rstrip("/")
        self.retry_seconds = retry_seconds
        self.allow_private = allow_private
        self.http = httpx.AsyncClient(timeout=10, follow_redirects=False)

    async def send_due(self) -> int:
        """Deliver what is due; the number of rows delivered (0: nothing more now)."""
        rows = await asyncio.to_thread(self.outbox.due, self.clock())
        delivered = 0
        for row in rows:
            result, ok = await self._deliver(row)
            if ok:
                await asyncio.to_thread(self.outbox.delivered, row.id, self.clock(), result)
                delivered += 1
            else:
                wait = self.retry_seconds * 2 ** min(row.attempts, MAX_BACKOFF_STEPS)
                await asyncio.to_thread(self.outbox.failed, row.id, self.clock() + timedelta(seconds=wait), result)
                log.info("status %s of run %s not delivered (%s); again in %.1fs", row.state, row.run_id, result, wait)
        return delivered

    async def _deliver(self, row: DueStatus) -> tuple[str, bool]:
        try:
            found = await asyncio.to_thread(self.book.status_target, row.repository_id)
        except DomainError as unavailable:
            return f"not sent: {unavailable}", False
        if found is None:
            return "not sent: the repository has no status target now", True
        token, target = found
        request = status_request(StatusKind(target.kind), target.api_url, target.project, token, row.commit,
                                 RunState(row.state), row.context, f"{self.public_url}/#/runs/{row.run_id}")
        try:
            await self._check_address(request.url)
            answer = await self.http.post(request.url, headers=request.headers, json=request.json)
        except Refused as refused:
            return f"refused: {refused}", False
        except httpx.HTTPError as failed:
            return f"error: {type(failed).__name__}", False
        return f"HTTP {answer.status_code}", answer.is_success

    async def _check_address(self, url: str) -> None:
        if self.allow_private:
            return
        host = urlsplit(url).hostname or ""
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        private = sorted({info[4][0] for info in infos if is_private(info[4][0])})
        if private:
            raise Refused(f"{host} is a private address ({', '.join(private)}); LEDGERCI_OUTBOUND_ALLOW_PRIVATE "
                          "allows it")

    async def close(self) -> None:
        await self.http.aclose()
