"""Tells a runner to stop an attempt now (after a cancel committed)."""

from __future__ import annotations

import logging

from nats.aio.client import Client as NATS

from domain.messages import control_subject

log = logging.getLogger(__name__)

# The stop is a courtesy that makes a cancel take effect at once; how long it may hold up the
# cancel's answer when NATS does not answer.
STOP_FLUSH_SECONDS = 0.5


class Control:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc

    async def stop(self, job_id: str, attempt: int) -> None:
        # Core NATS, fire and forget: a runner that misses it is refused at its next heartbeat.
        # So NATS being away must not fail the cancel, which is committed by now: answering
        # 503 would tell the caller to retry something that already happened.
        try:
            await self.nc.publish(control_subject(job_id, attempt), b"cancel")
            await self.nc.flush(timeout=STOP_FLUSH_SECONDS)
        except Exception as failed:
            log.warning("could not tell the runner of %s:%d to stop (%s); its next heartbeat will be refused",
                        job_id, attempt, type(failed).__name__)
