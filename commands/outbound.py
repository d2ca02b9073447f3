"""Requests ledgerci makes to other people's servers (commit statuses, outgoing webhooks), and
the one loop that delivers an outbox of them at least once.

A request never follows a redirect and, unless the admin allows it
(LEDGERCI_OUTBOUND_ALLOW_PRIVATE), never goes to a loopback, link-local or private address: a
tenant's URL must not reach into the cluster. (The address is checked when the request is
made; a name that resolves differently between the check and the connection is not caught.)
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Hashable
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import httpx

from domain.statuses import is_private

log = logging.getLogger(__name__)

MAX_BACKOFF_STEPS = 8  # the wait doubles up to 2**8 times the first
TIMEOUT_SECONDS = 10


class Outcome(NamedTuple):
    ok: bool
    result: str  # what a user reads: "HTTP 201", "refused: ...", "error: ConnectTimeout"
    status_code: int | None = None


class Due(Protocol):
    id: str
    attempts: int


class Outbox(Protocol):
    def due(self, now: datetime, limit: int = 50) -> list[Any]: ...
    def delivered(self, row_id: str, at: datetime, outcome: Outcome) -> None: ...
    def failed(self, row_id: str, at: datetime, retry_at: datetime | None, outcome: Outcome) -> None: ...
    def release(self, row_ids: list[str], at: datetime) -> None: ...


class Outbound:
    """One HTTP client for every outbound request of a process."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self.http = httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False)

    async def post(self, url: str, headers: dict[str, str], *, json: Any = None,
                   content: bytes | None = None) -> Outcome:
        """2xx is delivered; a redirect, like any other answer, is not. The whole request has
        TIMEOUT_SECONDS, and the answer's body is never read: a receiver that trickles bytes
        or answers with gigabytes costs this process nothing."""
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                await self._check_address(url)
                async with self.http.stream("POST", url, headers=headers, json=json, content=content) as answer:
                    return Outcome(answer.is_success, f"HTTP {answer.status_code}", answer.status_code)
        except _Refused as refused:
            return Outcome(False, f"refused: {refused}")
        except Exception as failed:  # whatever the name, the address or the peer did: not delivered
            return Outcome(False, f"error: {type(failed).__name__}")

    async def _check_address(self, url: str) -> None:
        if self.allow_private:
            return
        host = urlsplit(url).hostname or ""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as unresolved:
            raise httpx.ConnectError(str(unresolved)) from None
        private = sorted({info[4][0] for info in infos if is_private(info[4][0])})
        if private:
            raise _Refused(f"{host} is a private address ({', '.join(private)}); LEDGERCI_OUTBOUND_ALLOW_PRIVATE "
                           "allows it")

    async def close(self) -> None:
        await self.http.aclose()


class _Refused(Exception):
    """The target may not be called (a private address); tried again later, it stays refused."""


class OutboxSender:
    """Delivers an outbox at least once: a row is marked delivered only after its target
    answered 2xx, so a sender killed mid-delivery sends it again when it starts again. A
    failure is tried again later, the wait doubling up to a cap; after `max_attempts` it is
    given up (None: never). Rows of one `receiver` go one after another, in their order;
    different receivers at once, so one slow receiver does not hold up the others.

    A subclass says what one row's request is (`deliver`) and whose it is (`receiver`)."""

    max_attempts: int | None = None

    def __init__(self, outbox: Outbox, outbound: Outbound, clock: Callable[[], datetime], public_url: str, *,
                 retry_seconds: float) -> None:
        self.outbox = outbox
        self.outbound = outbound
        self.clock = clock
        self.public_url = public_url.rstrip("/")
        self.retry_seconds = retry_seconds

    async def deliver(self, row: Any) -> Outcome:
        raise NotImplementedError

    def receiver(self, row: Any) -> Hashable:
        raise NotImplementedError

    async def send_due(self) -> int:
        """Deliver what is due; the number delivered (0: nothing more now)."""
        rows = await asyncio.to_thread(self.outbox.due, self.clock())
        queues: dict[Hashable, list[Any]] = {}
        for row in rows:
            queues.setdefault(self.receiver(row), []).append(row)
        return sum(await asyncio.gather(*(self._one_after_another(queue) for queue in queues.values())))

    async def _one_after_another(self, queue: list[Any]) -> int:
        """A receiver's rows in order, until one is not delivered: the rest are given back for
        the next pass, so a receiver that is down costs one attempt per pass, not one per row."""
        delivered = 0
        for index, row in enumerate(queue):
            try:
                outcome = await self.deliver(row)
            except Exception as failed:  # a bug of ours: recorded on the row, never a stalled loop
                log.exception("delivering %s failed", row.id)
                outcome = Outcome(False, f"error: {type(failed).__name__}")
            if outcome.ok:
                await asyncio.to_thread(self.outbox.delivered, row.id, self.clock(), outcome)
                delivered += 1
                continue
            attempts = row.attempts + 1
            wait = self.retry_seconds * 2 ** min(row.attempts, MAX_BACKOFF_STEPS)
            given_up = self.max_attempts is not None and attempts >= self.max_attempts
            retry_at = None if given_up else self.clock() + timedelta(seconds=wait)
            await asyncio.to_thread(self.outbox.failed, row.id, self.clock(), retry_at, outcome)
            log.info("%s not delivered (%s); %s", row.id, outcome.result,
                     f"given up after {attempts} attempts" if given_up else f"again in {wait:.1f}s")
            if rest := [later.id for later in queue[index + 1:]]:
                await asyncio.to_thread(self.outbox.release, rest, self.clock())
            break
        return delivered
