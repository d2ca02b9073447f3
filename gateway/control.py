"""Tells a runner to stop an attempt now (after a cancel committed)."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from domain.messages import control_subject


class Control:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc

    async def stop(self, job_id: str, attempt: int) -> None:
        # Core NATS, fire and forget: a runner that misses it is refused at its next heartbeat.
        await self.nc.publish(control_subject(job_id, attempt), b"cancel")
        await self.nc.flush()
