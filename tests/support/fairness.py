"""Scenarios and measures of fair admission, shared by tests/e2e/test_admission.py and
bench/fairness.py: tenants with backlogs, and what the event history says each one got."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from commands.app import LedgerApp
from commands.store import eventsourcing_env
from projections.sql import open_database
from tests.support.api import Api
from tests.support.git_repo import GitRepo
from tests.support.invariants import all_events, running_over_time

Span = tuple[datetime, datetime]


def one_job(seconds: float) -> str:
    return f"jobs:\n  - name: work\n    run: sleep {seconds}\n"


def tenant_with_backlog(admin: Api, base_dir: Path, name: str, runs: int, script: str, **settings: int) -> list[str]:
    """A tenant, a repository with `runs` commits, and a push of each: the run ids."""
    tenant_id, _ = admin.tenant(name)
    admin.http.patch(f"/api/v1/tenants/{tenant_id}", json={
        "max_queued_runs": 1000, "pushes_per_minute": 1000, "max_concurrent_jobs": 100, **settings,
    }).raise_for_status()
    repo = GitRepo(base_dir / name)
    repository_id = admin.repository(tenant_id, repo.clone_url, f"{name}-repo")
    commits = [repo.commit({".ledgerci.yml": script, "n": str(i)}) for i in range(runs)]
    pushed = [admin.push(repository_id, commit) for commit in commits]
    refused = [response.text for response in pushed if response.status_code != 202]
    assert not refused, refused[0]
    return [response.json()["run_id"] for response in pushed]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def count_jobs(database_url: str, status: str) -> int:
    db = open_database(database_url)
    try:
        return db.query("SELECT count(*) FROM lci_jobs WHERE status = ?", (status,))[0][0]
    finally:
        db.close()


def history(database_url: str) -> list[tuple[int, Any]]:
    app = LedgerApp(env=eventsourcing_env(database_url))
    try:
        return all_events(app)
    finally:
        app.close()


def starts_in_order(events: list[tuple[int, Any]]) -> list[tuple[str, datetime]]:
    """(tenant, when) of every JobStarted, in the store's order."""
    return [(tenant, event.timestamp) for event, tenant, _, _ in running_over_time(events)
            if type(event).__name__ == "JobStarted"]


def attempts_by_tenant(events: list[tuple[int, Any]]) -> dict[str, list[Span]]:
    """(started, ended) of every attempt that ran, per tenant."""
    started: dict[tuple[str, int], datetime] = {}
    spans: dict[str, list[Span]] = defaultdict(list)
    for event, tenant_id, _, _ in running_over_time(events):
        key = (event.job_id, event.attempt)
        if type(event).__name__ == "JobStarted":
            started[key] = event.timestamp
        elif key in started:
            spans[tenant_id].append((started.pop(key), event.timestamp))
    return spans


def shares_under_contention(spans: dict[str, list[Span]], tenants: list[str]) -> tuple[dict[str, float], float]:
    """Each tenant's share of the runner time used while all of them still had jobs to start
    (from the first start to the first tenant's last start), and that window in seconds."""
    window_start = min(start for name in tenants for start, _ in spans[name])
    window_end = min(max(start for start, _ in spans[name]) for name in tenants)
    runner_time = {
        name: sum(max((min(end, window_end) - max(start, window_start)).total_seconds(), 0.0)
                  for start, end in spans[name])
        for name in tenants
    }
    total = sum(runner_time.values())
    return {name: runner_time[name] / total for name in tenants}, (window_end - window_start).total_seconds()


def jain_index(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(value * value for value in values))
