"""The runner's and admission's logic in seconds: ledgerci in the test's process (SQLite, the
embedded nats-server), jobs played by the scripted executor (tests/support/in_process.py).

What needs a real process killed, paused or cut off stays in tests/e2e; what is decided by the
runner, the command service and admission is tested here, each test ending with the invariant
checker over the whole history.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from tests.support.api import Api
from tests.support.git_repo import GitRepo
from tests.support.in_process import InProcess, in_process_ledger
from tests.support.invariants import check_invariants


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[InProcess]:
    with in_process_ledger(tmp_path / "ledgerci", runner_slots=4, stop_grace_seconds=1.0) as ledger:
        yield ledger
        assert check_invariants(ledger.database_url) == []


def workflow(*jobs: str) -> str:
    return "jobs:\n" + "".join(jobs)


def job(name: str, *steps: str, extra: str = "") -> str:
    script = "".join(f"      {step}\n" for step in steps)
    return f"  - name: {name}\n    run: |\n{script}{extra}"


def push(api: Api, tmp_path: Path, file: str, tenant_id: str | None = None, runs: int = 1) -> list[str]:
    """`runs` pushes of `file` (one commit each) to a new repository of the tenant (a new one if None)."""
    tenant_id = tenant_id or api.tenant()[0]
    repo = GitRepo(tmp_path / f"repo-{tenant_id}")
    repository_id = api.repository(tenant_id, repo.clone_url)
    commits = [repo.commit({".ledgerci.yml": file}, message=f"push {n}") for n in range(runs)]
    return [api.push(repository_id, commit).json()["run_id"] for commit in commits]


def test_jobs_play_their_scripts_in_order_and_their_logs_are_kept(tmp_path: Path, ledger: InProcess):
    [run_id] = push(ledger.api, tmp_path, workflow(job("build", "say built it", "write dist/app.txt hello"),
                                                   job("check", "say checked")))
    run = ledger.api.wait_run(run_id, timeout=30)
    assert run["status"] == "succeeded", ledger.api.explain(run_id)
    assert [execution.env["LEDGERCI_JOB_NAME"] for execution in ledger.executor.started] == ["build", "check"]
    build, check = run["jobs"]
    assert "built it" in ledger.api.log(build["id"]) and "checked" in ledger.api.log(check["id"])
    assert build["runner_id"] == "scripted-runner"


def test_a_failed_job_skips_the_next_and_runs_the_one_on_failure(tmp_path: Path, ledger: InProcess):
    [run_id] = push(ledger.api, tmp_path, workflow(job("build", "say compiling", "exit 3"),
                                                   job("test", "say never"),
                                                   job("report", "say reported", extra="    when: on_failure\n")))
    run = ledger.api.wait_run(run_id, timeout=30)
    assert run["status"] == "failed"
    assert [(j["name"], j["status"], j["exit_code"]) for j in run["jobs"]] == [
        ("build", "failed", 3), ("test", "skipped", None), ("report", "succeeded", 0)]


def test_a_cancel_stops_the_running_job_where_it_is(tmp_path: Path, ledger: InProcess):
    [run_id] = push(ledger.api, tmp_path, workflow(job("deploy", "say waiting", "wait never"),
                                                   job("after", "say never")))
    ledger.executor.wait_until(started=1)
    assert ledger.api.http.post(f"/api/v1/runs/{run_id}/cancel").status_code == 200
    ledger.executor.wait_until(cancelled=1)
    run = ledger.api.wait_run(run_id, timeout=30)
    assert run["status"] == "cancelled"
    assert [j["status"] for j in run["jobs"]] == ["cancelled", "cancelled"]
    assert len(ledger.executor.started) == 1


def test_a_job_past_its_timeout_is_retried_then_fails_timed_out(tmp_path: Path, ledger: InProcess):
    [run_id] = push(ledger.api, tmp_path, workflow(job("slow", "wait never", extra="    timeout: 1\n    retries: 1\n")))
    run = ledger.api.wait_run(run_id, timeout=30)
    assert run["status"] == "failed"
    [slow] = run["jobs"]
    assert (slow["attempt"], slow["error"]) == (2, "timed out")
    history = [e for e in ledger.api.events(run_id) if e["type"] == "JobAttemptAbandoned"]
    assert [(e["data"]["attempt"], e["data"]["reason"]) for e in history] == [(1, "timed out"), (2, "timed out")]


def test_a_tenant_at_its_quota_runs_one_job_at_a_time(tmp_path: Path, ledger: InProcess):
    """Three runs of a tenant whose quota is one job: admission starts the next only when the
    running one has ended (and the invariant checker, after the test, checks it over the history)."""
    tenant_id, _ = ledger.api.tenant()
    ledger.api.http.patch(f"/api/v1/tenants/{tenant_id}", json={"max_concurrent_jobs": 1}).raise_for_status()
    run_ids = push(ledger.api, tmp_path, workflow(job("build", "wait go")), tenant_id=tenant_id, runs=3)
    ledger.executor.wait_until(started=1)
    ledger.executor.open("go")
    runs = [ledger.api.wait_run(run_id, timeout=30) for run_id in run_ids]
    assert [run["status"] for run in runs] == ["succeeded"] * 3
    jobs = sorted((run["jobs"][0] for run in runs), key=lambda job: job["started_at"])
    assert all(later["started_at"] >= earlier["finished_at"] for earlier, later in pairwise(jobs))


def test_a_job_the_script_cannot_play_fails_saying_why(tmp_path: Path, ledger: InProcess):
    [run_id] = push(ledger.api, tmp_path, workflow(job("odd", "dance now")))
    run = ledger.api.wait_run(run_id, timeout=30)
    assert run["status"] == "failed"
    assert run["jobs"][0]["error"] == "scripted executor: unknown step 'dance' (say, write, show, sleep, wait, exit)"
