"""Streams a job's output to the LOGS stream as it comes, batched by size and time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from nats.js import JetStreamContext

from domain.messages import log_chunk_msg_id, logs_subject
from runner.masking import Masker

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 32 * 1024
# Output waits at most this long for more to batch with: lines show up well within ~100 ms.
MAX_DELAY_SECONDS = 0.05
MAX_LOG_BYTES = 16 * 1024 * 1024


def truncation_notice(max_bytes: int) -> bytes:
    return f"\nledgerci: the log was cut here at {max_bytes} bytes (LEDGERCI_MAX_LOG_BYTES); the job went on\n".encode()


class LogStream:
    def __init__(self, js: JetStreamContext, job_id: str, attempt: int, secrets: Sequence[str] = (),
                 max_bytes: int = MAX_LOG_BYTES) -> None:
        self.js = js
        self.max_bytes = max_bytes
        self.bytes_taken = 0  # masked output accepted into the log, notice excluded
        self.bytes_dropped = 0
        self._masker = Masker(secrets)  # the job's secrets never leave the runner in its log
        self.job_id = job_id
        self.attempt = attempt
        self.subject = logs_subject(job_id, attempt)
        self.sequence = 0
        self.bytes_sent = 0
        self._buffer = bytearray()
        self._flush_timer: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()  # chunks must reach the stream in order
        self._last_flush = float("-inf")  # loop time of the last flush

    async def write(self, data: bytes) -> None:
        self._take(self._masker.feed(data))
        if len(self._buffer) >= MAX_CHUNK_BYTES:
            await self.flush()
        elif self._flush_timer is None and self._buffer:
            # Output after a quiet spell goes out at once; output that follows closely waits
            # for the rest of the window and goes out with it: one message, not hundreds.
            loop = asyncio.get_running_loop()
            wait = self._last_flush + MAX_DELAY_SECONDS - loop.time()
            self._flush_timer = loop.call_later(max(wait, 0.0), self._flush_soon)

    def _take(self, data: bytes) -> None:
        """Keep output up to the cap; past it, drop it (the job is not stopped), saying so once."""
        room = self.max_bytes - self.bytes_taken
        if len(data) > room and not self.bytes_dropped:
            self._buffer += data[:max(room, 0)] + truncation_notice(self.max_bytes)
        elif len(data) <= room:
            self._buffer += data
        kept = min(len(data), max(room, 0))
        self.bytes_taken += kept
        self.bytes_dropped += len(data) - kept

    def _flush_soon(self) -> None:
        self._flush_timer = None
        task = asyncio.create_task(self.flush())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        async with self._lock:
            self._last_flush = asyncio.get_running_loop().time()
            while self._buffer:
                chunk = bytes(self._buffer[:MAX_CHUNK_BYTES])
                del self._buffer[:MAX_CHUNK_BYTES]
                self.sequence += 1
                headers = {"Nats-Msg-Id": log_chunk_msg_id(self.job_id, self.attempt, self.sequence)}
                try:
                    await self.js.publish(self.subject, chunk, headers=headers)
                except Exception:
                    # A lost chunk must not stop the job; the gap is visible in the sequence.
                    log.exception("log chunk %d of job %s lost", self.sequence, self.job_id)
                    continue
                self.bytes_sent += len(chunk)

    async def close(self) -> None:
        self._take(self._masker.close())
        await self.flush()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
