"""Live streams of a run's changes and of a job's log, for SSE and WebSocket alike.

A follower yields `StreamMessage`s; the transport (gateway/sse.py, gateway/websocket.py) only
frames them. What is sent is always read from the source of truth (the event store for a run,
the LOGS stream or the archive for a log); NATS notifications only say *when* to read, so a
missed or repeated notification changes nothing, and no loop sleeps on a timer.

Ids make streams resumable: a run message's id is the run's version after that change, so
`Last-Event-ID: N` resumes with exactly the changes after version N; a log message's id is
`<attempt>-<byte offset after the chunk>`, so a resumed log starts at the next byte. A stopping
gateway ends every stream at once with a retry hint, and clients reconnect (to another replica)
from their last id.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import msgspec
from nats.aio.client import Client as NATS

from commands.app import LedgerApp
from commands.envelope import to_event_message
from domain.job import Job
from domain.messages import EVENTS_SUBJECT_PREFIX
from domain.run import Run
from gateway.logs import LogReader
from gateway.views import run_view

KEEP_ALIVE_SECONDS = 15.0
RECONNECT_MILLISECONDS = 1000


class StreamMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a stream; a comment-only message keeps an idle connection open."""

    event: str | None = None
    data: str = ""
    id: str | None = None
    comment: str | None = None
    retry: int | None = None  # milliseconds a client waits before reconnecting


KEEP_ALIVE = StreamMessage(comment="keep-alive")
STOPPING = StreamMessage(comment="the gateway is stopping: reconnect", retry=RECONNECT_MILLISECONDS)


class RunChange(msgspec.Struct, kw_only=True):
    """The data of a run message: the run after the change, and the event that made it."""

    run: Any
    event: Any = None


class LogText(msgspec.Struct, kw_only=True):
    text: str
    attempt: int


class AttemptStarted(msgspec.Struct, kw_only=True):
    attempt: int


class JobEnded(msgspec.Struct, kw_only=True):
    status: str
    exit_code: int | None
    error: str | None


def _json(value: msgspec.Struct) -> str:
    return msgspec.json.encode(value).decode()


class Waker:
    """Wakes a follower when its run changes, its gateway stops, or it is time for a keep-alive."""

    def __init__(self, shutdown: asyncio.Event, keep_alive: float) -> None:
        self.changed = asyncio.Event()
        self.shutdown = shutdown
        self.keep_alive = keep_alive

    def wake(self, *_: object) -> None:
        self.changed.set()

    async def pause(self) -> StreamMessage | None:
        """Until there is news: None when something changed, else what to send the client
        (a keep-alive after an idle spell; the retry hint when the gateway stops)."""
        match await self.wait():
            case "stopping":
                return STOPPING
            case "idle":
                return KEEP_ALIVE
        return None

    async def wait(self) -> str:
        """"changed", "stopping" or "idle"; a change that came before the call counts."""
        if self.shutdown.is_set():
            return "stopping"
        if self.changed.is_set():
            self.changed.clear()
            return "changed"
        waits = {asyncio.ensure_future(self.changed.wait()): "changed",
                 asyncio.ensure_future(self.shutdown.wait()): "stopping"}
        try:
            done, _ = await asyncio.wait(waits, timeout=self.keep_alive, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        if self.shutdown.is_set():
            return "stopping"
        if done:
            self.changed.clear()
            return "changed"
        return "idle"


@dataclass(frozen=True)
class Streams:
    ledger: LedgerApp
    nc: NATS
    logs: LogReader
    shutdown: asyncio.Event
    keep_alive: float = KEEP_ALIVE_SECONDS

    async def _on_run_changes(self, run_id: UUID | str, waker: Waker) -> Callable[[], Awaitable[None]]:
        # Subscribed before anything is read: a change that commits in between still wakes us.
        subscription = await self.nc.subscribe(f"{EVENTS_SUBJECT_PREFIX}.Run.{run_id}.>", cb=_async(waker.wake))
        return subscription.unsubscribe

    async def follow_run(self, run_id: UUID, last_seen: int | None) -> AsyncIterator[StreamMessage]:
        waker = Waker(self.shutdown, self.keep_alive)
        unsubscribe = await self._on_run_changes(run_id, waker)
        try:
            sent = last_seen
            if sent is None:  # a new client: the state now comes first
                run = await asyncio.to_thread(self.ledger.runs.load_run, run_id)
                yield _run_message(run, None)
                sent = run.version
                if run.status.is_final:
                    yield _run_end(run)
                    return
            while True:
                for message, ended in await asyncio.to_thread(self._changes, run_id, sent):
                    yield message
                    sent = int(message.id or sent)
                    if ended:
                        yield ended
                        return
                pause = await waker.pause()
                if pause is not None:
                    yield pause
                if pause is STOPPING:
                    return
        finally:
            with contextlib.suppress(Exception):
                await unsubscribe()

    async def follow_log(self, run_id: UUID, job_id: str, resume_from: str | None,
                         attempt: int | None = None) -> AsyncIterator[StreamMessage]:
        """The job's current attempt's log from the start (or from `resume_from`), then live,
        then an `end` message saying how the job finished. With `attempt`, that attempt's log
        alone, ending when the attempt does."""
        waker = Waker(self.shutdown, self.keep_alive)
        unsubscribe = await self._on_run_changes(run_id, waker)
        try:
            if attempt is not None:
                async for message in self._follow_one_attempt(run_id, job_id, attempt, resume_from, waker):
                    yield message
                return
            job = await self._job(run_id, job_id)
            attempt, offset = _parse_log_id(resume_from) or (max(job.attempt, 1), 0)
            while True:
                async for message in self._follow_attempt(run_id, job_id, attempt, offset, waker):
                    yield message
                    if message is STOPPING:
                        return
                job = await self._job(run_id, job_id)
                if job.status.is_final and job.attempt <= attempt:
                    yield StreamMessage(event="end", data=_json(JobEnded(
                        status=job.status.value, exit_code=job.exit_code, error=job.error)))
                    return
                attempt, offset = attempt + 1, 0
                yield StreamMessage(event="attempt", id=f"{attempt}-0", data=_json(AttemptStarted(attempt=attempt)))
        finally:
            with contextlib.suppress(Exception):
                await unsubscribe()

    async def _follow_one_attempt(self, run_id: UUID, job_id: str, attempt: int, resume_from: str | None,
                                  waker: Waker) -> AsyncIterator[StreamMessage]:
        resumed = _parse_log_id(resume_from)
        offset = resumed[1] if resumed and resumed[0] == attempt else 0  # an id of another attempt: from the start
        async for message in self._follow_attempt(run_id, job_id, attempt, offset, waker):
            yield message
            if message is STOPPING:
                return
        job = await self._job(run_id, job_id)
        if job.attempt == attempt:
            yield StreamMessage(event="end", data=_json(JobEnded(
                status=job.status.value, exit_code=job.exit_code, error=job.error)))
            return
        # An earlier attempt always ended without a result of its own (a result ends the job):
        # its runner was lost or stopped, or it timed out. The run's history says which.
        history = await asyncio.to_thread(self.ledger.audit.history, run_id)
        reason = next((event.data.get("reason") for event in history if event.type == "JobAttemptAbandoned"
                       and event.data.get("job_id") == job_id and event.data.get("attempt") == attempt), None)
        yield StreamMessage(event="end", data=_json(JobEnded(status="abandoned", exit_code=None, error=reason)))

    async def _follow_attempt(self, run_id: UUID, job_id: str, attempt: int, offset: int,
                              waker: Waker) -> AsyncIterator[StreamMessage]:
        """One attempt's log from byte `offset` until the attempt has ended and all of it is sent."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        position = offset  # bytes of the attempt's log taken in, whole characters or not
        async with self.logs.follow(job_id, attempt, offset, on_chunk=waker.wake) as chunks:
            while True:
                # Whether the attempt is over and every chunk has arrived is asked before the
                # chunks are taken: a chunk arriving while it is asked is then still sent.
                job = await self._job(run_id, job_id)
                over = _attempt_over(job, attempt) and await chunks.complete()
                for chunk in chunks.take():
                    position += len(chunk)
                    text = decoder.decode(chunk)
                    if text:
                        # The id points past the last whole character sent: bytes of a split
                        # character wait in the decoder and go out with the next chunk.
                        sent_to = position - len(decoder.getstate()[0])
                        yield StreamMessage(event="log", id=f"{attempt}-{sent_to}",
                                            data=_json(LogText(text=text, attempt=attempt)))
                if over:
                    tail = decoder.decode(b"", final=True)
                    if tail:
                        yield StreamMessage(event="log", id=f"{attempt}-{position}",
                                            data=_json(LogText(text=tail, attempt=attempt)))
                    return
                pause = await waker.pause()
                if pause is not None:
                    yield pause
                if pause is STOPPING:
                    return

    def _changes(self, run_id: UUID, version: int) -> list[tuple[StreamMessage, StreamMessage | None]]:
        """A message per change after `version` (made as the run advances: it is one object),
        each with the `end` message when that change ended the run."""
        return [(_run_message(run, event), _run_end(run) if run.status.is_final else None)
                for event, run in self.ledger.audit.changes_after(run_id, version)]

    async def _job(self, run_id: UUID, job_id: str) -> Job:
        run = await asyncio.to_thread(self.ledger.runs.load_run, run_id)
        return run.job(job_id)


def _attempt_over(job: Job, attempt: int) -> bool:
    """Nothing more will be logged for `attempt`: the job moved on or ended."""
    return job.attempt > attempt or job.status.is_final


def _parse_log_id(value: str | None) -> tuple[int, int] | None:
    attempt, _, offset = (value or "").partition("-")
    if attempt.isdigit() and offset.isdigit() and int(attempt) >= 1:
        return int(attempt), int(offset)
    return None


def parse_run_version(value: str | None) -> int | None:
    """A run stream's `Last-Event-ID` (a version), or None when absent or not ours."""
    return int(value) if value and value.isascii() and value.isdigit() and len(value) <= 18 else None


def _run_message(run: Run, event: object | None) -> StreamMessage:
    change = RunChange(run=run_view(run), event=to_event_message(event, None) if event is not None else None)
    return StreamMessage(id=str(run.version), event="run" if event is None else type(event).__name__,
                         data=_json(change))


def _run_end(run: Run) -> StreamMessage:
    return StreamMessage(event="end", id=str(run.version), data=run.status.value)


def _async(callback: Callable[..., None]) -> Callable[..., Awaitable[None]]:
    async def call(*args: object) -> None:
        callback(*args)

    return call
