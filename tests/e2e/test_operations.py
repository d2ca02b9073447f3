"""What operators rely on: Prometheus metrics and structured logs, from real processes."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.support.api import Api
from tests.support.cluster import LedgerCluster
from tests.support.git_repo import GitRepo
from tests.support.processes import free_port

pytestmark = pytest.mark.e2e

WORKFLOW = "jobs:\n  - name: first\n    run: 'true'\n  - name: second\n    run: exit 3\n"


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None if it is absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_metrics_show_load_per_tenant_lag_and_job_timings(tmp_path: Path, cluster: LedgerCluster,
                                                          admin: Api) -> None:
    metrics_port = free_port()
    json_logs = {"LEDGERCI_LOG_FORMAT": "json"}
    cluster.kill("scheduler")  # again, serving its own metrics
    cluster.start("scheduler", env={"LEDGERCI_METRICS_PORT": str(metrics_port)})
    cluster.kill("relay")  # again, logging JSON, as is a second gateway
    cluster.start("relay", env=json_logs)
    cluster.start("gateway#2", env=json_logs)
    tenant_id, _ = admin.tenant("metered")
    repo = GitRepo(tmp_path / "repo")
    repository_id = admin.repository(tenant_id, repo.clone_url)
    run = admin.wait_run(admin.push(repository_id, repo.commit({".ledgerci.yml": WORKFLOW})).json()["run_id"])
    assert run["status"] == "failed"

    cluster.kill("runner")  # the next run's job stays queued: the gauge must show it
    queued = admin.push(repository_id, repo.commit({".ledgerci.yml": WORKFLOW, "x": "1"})).json()["run_id"]
    admin.wait_run(queued, until=lambda r: r["jobs"] and r["jobs"][0]["status"] == "queued")
    public = httpx.get(f"{cluster.url}/metrics")  # no token: metrics are public, like health
    assert public.status_code == 200 and public.headers["content-type"].startswith("text/plain")
    assert sample(public.text, "ledgerci_jobs", tenant=tenant_id, status="queued") == 1
    assert sample(public.text, "ledgerci_projection_lag_events") is not None
    deadline = time.monotonic() + 10
    while sample(httpx.get(f"{cluster.url}/metrics").text, "ledgerci_relay_lag_events") != 0:
        assert time.monotonic() < deadline, "the relay never caught up"
        time.sleep(0.1)

    scheduler = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert sample(scheduler, "ledgerci_dispatch_latency_seconds_count") == 2  # the first run's two jobs
    assert sample(scheduler, "ledgerci_job_duration_seconds_count", outcome="succeeded") == 1
    assert sample(scheduler, "ledgerci_job_duration_seconds_count", outcome="failed") == 1

    for service, says in (("relay", "relay resumes"), ("gateway#2", "gateway listening")):
        logged = cluster.log_path(service).read_text().splitlines()
        entries = [json.loads(line) for line in logged[logged.index(next(x for x in logged if x.startswith("{"))):]]
        assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
        assert any(says in entry["message"] for entry in entries), service
