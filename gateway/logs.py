"""Reads a job attempt's log back from the LOGS stream, in order."""

from __future__ import annotations

import asyncio
import contextlib

from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from domain.messages import LOGS_STREAM, logs_subject

READ_TIMEOUT_SECONDS = 5.0


class LogReader:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def read(self, job_id: str, attempt: int) -> bytes:
        """Everything the attempt has logged so far."""
        if attempt < 1:
            return b""
        subject = logs_subject(job_id, attempt)
        info = await self.js.stream_info(LOGS_STREAM, subjects_filter=subject)
        if not (info.state.subjects or {}).get(subject):
            return b""
        chunks: list[bytes] = []
        subscription = await self.js.subscribe(
            subject, stream=LOGS_STREAM, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
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
