"""Prometheus metrics observed where the write side learns them.

Each is observed by the process that handled the command, exactly once per command that
changed something (a repeated command appends nothing and observes nothing), so summing over
replicas gives the whole system's figures. Gauges of the whole system (queue depth per tenant,
projection and relay lag) are read at scrape time by the gateway (gateway.metrics).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from domain.job import Job
from domain.status import JobStatus

# From a job queued to its attempt claimed by a runner: what users wait before anything runs.
DISPATCH_LATENCY = Histogram(
    "ledgerci_dispatch_latency_seconds", "Time from a job attempt queued to its claim by a runner",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
JOB_DURATION = Histogram(
    "ledgerci_job_duration_seconds", "Time from a job attempt's claim to its reported outcome",
    ["outcome"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)
DEADLINES_PASSED = Counter(
    "ledgerci_deadlines_passed_total", "Attempts the reaper ended: runner lost, timed out, not picked up",
    ["reason"],
)
EVENTS_PUBLISHED = Counter("ledgerci_events_published_total", "Events the relay published to JetStream")


def observe_claimed(job: Job) -> None:
    if job.status is JobStatus.RUNNING and job.queued_at and job.started_at:
        DISPATCH_LATENCY.observe((job.started_at - job.queued_at).total_seconds())


def observe_finished(job: Job) -> None:
    """A job the runner reported on: its attempt's duration, by outcome. (An attempt that
    timed out and is queued again for a retry has no finish of its own to observe.)"""
    if job.finished_at and job.started_at:
        JOB_DURATION.labels(job.status.value).observe((job.finished_at - job.started_at).total_seconds())
ADMISSION_RELEASED = Counter("ledgerci_admission_released_total",
                             "Queued attempts the admission leader released into free runner slots")
ADMISSION_DECISION = Histogram(
    "ledgerci_admission_decision_seconds", "Time the admission leader takes to choose the attempts of one release",
    buckets=(0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05),
)
