"""A runner's cancels come through one subscription of each kind (runner/stops.py), on a real
nats-server: a gateway's control message and a relayed `JobCancelled` each stop the attempt
they name and no other, and one heard before its attempt is watched stops it as it starts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import nats
import pytest

from domain.messages import EventMessage, control_subject, events_subject
from runner.stops import AttemptStops

pytestmark = pytest.mark.integration


def job_cancelled(run_id: str, job_id: str, attempt: int) -> bytes:
    return msgspec.json.encode(EventMessage(
        position=7, aggregate_id=run_id, aggregate_type="Run", version=5, type="JobCancelled",
        at=datetime.now(UTC), actor="planner", data={"job_id": job_id, "attempt": attempt}))


async def test_each_cancel_stops_the_attempt_it_names_even_one_heard_before_the_attempt_started(nats_server):
    nc = await nats.connect(nats_server.url)
    stops = AttemptStops(nc)
    await stops.start()
    stopped: list[str] = []
    reached = {2: asyncio.Event(), 3: asyncio.Event()}  # how many attempts were stopped

    def stopper(name: str):
        def stop() -> None:
            stopped.append(name)
            if len(stopped) in reached:
                reached[len(stopped)].set()
        return stop

    try:
        stops.watch("job-a", 1, stopper("a1"))
        stops.watch("job-a", 2, stopper("a2"))
        stops.watch("job-b", 1, stopper("b1"))
        stops.watch("job-c", 1, stopper("c1 (forgotten)"))
        stops.forget("job-c", 1)
        await nc.publish(control_subject("job-c", 1), b"cancel")  # no longer watched
        # A cancel that comes between an attempt's claim and its start: heard before the next
        # control message (one subscription's messages are handled in order).
        await nc.publish(control_subject("job-d", 3), b"cancel")
        await nc.publish(control_subject("job-a", 2), b"cancel")
        await nc.publish(events_subject("Run", "run-1", "JobCancelled"), b"not an event")  # ignored
        await nc.publish(events_subject("Run", "run-1", "JobCancelled"), job_cancelled("run-1", "job-b", 1))
        await nc.flush()
        await asyncio.wait_for(reached[2].wait(), 10)
        assert sorted(stopped) == ["a2", "b1"]
        stops.watch("job-d", 3, stopper("d3"))
        await asyncio.wait_for(reached[3].wait(), 10)
        assert sorted(stopped) == ["a2", "b1", "d3"]
    finally:
        await stops.close()
        await nc.close()
