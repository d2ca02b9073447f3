"""Reads a job attempt's log: from the archive once the attempt ended and was archived, else
from the LOGS stream, where the runner publishes it chunk by chunk. Callers never need to know
which: the live stream may expire, the archive is kept."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from domain.errors import RunNotFoundError
from domain.messages import LOGS_STREAM, log_chunk_number, logs_subject
from projections.log_archive import LogArchive
from projections.queries import JobLocation

READ_TIMEOUT_SECONDS = 5.0
ARCHIVE_MESSAGE_BYTES = 64 * 1024  # an archived log goes out in pieces, like a live one


def attempt_to_read(job: JobLocation, asked: int | None) -> int:
    """The attempt a log request is about: the current one, or `?attempt=N` for any of 1 to
    the current one (earlier attempts' logs are kept). Any other number names nothing: 404."""
    if asked is None:
        return job.attempt
    if not 1 <= asked <= job.attempt:
        has = (f"attempts 1 to {job.attempt}" if job.attempt > 1
               else "attempt 1 only" if job.attempt else "no attempt yet")
        raise RunNotFoundError(f"job {job.job_id} has no attempt {asked} (it has {has})")
    return asked


class LogReader:
    def __init__(self, js: JetStreamContext, archive: LogArchive) -> None:
        self.js = js
        self.archive = archive

    async def read(self, job_id: str, attempt: int) -> bytes:
        """Everything the attempt has logged so far."""
        if attempt < 1:
            return b""
        archived = await asyncio.to_thread(self.archive.get, job_id, attempt)
        if archived is not None:
            return archived
        return await read_live_log(self.js, job_id, attempt)

    @contextlib.asynccontextmanager
    async def follow(self, job_id: str, attempt: int, offset: int,
                     on_chunk: Callable[[], None]) -> AsyncIterator[LogFollower]:
        """The attempt's log from byte `offset` on, as it arrives; `on_chunk` is called (on the
        event loop) whenever there is more to take."""
        archived = await asyncio.to_thread(self.archive.get, job_id, attempt) if attempt >= 1 else b""
        follower = LogFollower(self.js, logs_subject(job_id, attempt), offset, on_chunk)
        if archived is not None:
            for start in range(0, len(archived), ARCHIVE_MESSAGE_BYTES):
                follower.add(archived[start:start + ARCHIVE_MESSAGE_BYTES])
            follower.add(b"", final=True)
            yield follower
            return
        subscription = await self.js.subscribe(follower.subject, stream=LOGS_STREAM, cb=follower.on_message,
                                               ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        try:
            yield follower
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()


class LogFollower:
    def __init__(self, js: JetStreamContext, subject: str, offset: int, on_chunk: Callable[[], None]) -> None:
        self.js = js
        self.subject = subject
        self._skip = offset  # bytes the client already has
        self._on_chunk = on_chunk
        self._chunks: list[bytes] = []
        self._last_sequence = 0  # the stream sequence of the last chunk taken in
        self._final = False

    async def on_message(self, message: Msg) -> None:
        try:
            sequence = message.metadata.sequence.stream
        except Exception:  # a flow-control or heartbeat message, not a chunk
            return
        self._last_sequence = sequence
        self.add(message.data)

    def add(self, data: bytes, final: bool = False) -> None:
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            data = data[skipped:]
        if data:
            self._chunks.append(data)
        self._final = self._final or final
        self._on_chunk()

    def take(self) -> list[bytes]:
        chunks, self._chunks = self._chunks, []
        return chunks

    async def complete(self) -> bool:
        """True once every chunk stored for the attempt so far has been taken in. Asked only
        after the attempt ended, when the runner has published all it will."""
        if self._final:
            return True
        try:
            last = await self.js.get_last_msg(LOGS_STREAM, self.subject)
        except NotFoundError:
            return True  # nothing was logged
        return self._last_sequence >= (last.seq or 0)


async def read_live_log(js: JetStreamContext, job_id: str, attempt: int) -> bytes:
    """The attempt's chunks in the LOGS stream, in order, as they are now.

    Its last chunk first (one small request): none means nothing was logged, and a last chunk
    numbered 1 is the whole log (the runner numbers its chunks from 1 in `Nats-Msg-Id`), as
    for most short jobs; only a longer log is read through a consumer."""
    subject = logs_subject(job_id, attempt)
    try:
        last = await js.get_last_msg(LOGS_STREAM, subject)
    except NotFoundError:
        return b""
    if log_chunk_number(last.headers) == 1:
        return last.data or b""
    chunks: list[bytes] = []
    subscription = await js.subscribe(subject, stream=LOGS_STREAM, ordered_consumer=True,
                                      deliver_policy=DeliverPolicy.ALL)
    try:
        async with asyncio.timeout(READ_TIMEOUT_SECONDS):
            while True:
                message = await subscription.next_msg(timeout=READ_TIMEOUT_SECONDS)
                chunks.append(message.data)
                if message.metadata.num_pending == 0:
                    break
    finally:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()
    return b"".join(chunks)
