"""A cancel in every state a job can be in (issue 18): queued with no runner to take it,
handed to a runner that has not claimed it yet, running, finished but not yet reported, and
already recorded. Whatever the state, nothing later starts, no process is left, the run ends
`cancelled` with who cancelled it in its history (or stays as it ended), a second cancel
changes nothing, and the invariant checker holds over the whole history.

One runner only, so the test knows which process to freeze: a SIGSTOPped runner is how a job
is held between two steps (the dispatch delivered but not claimed; the process ended but its
outcome not reported) while the cancel lands."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_faults import assert_invariants, pid_in, repository, start_cluster, wait_for
from tests.support.api import Api
from tests.support.cluster import ADMIN_TOKEN, LedgerCluster
from tests.support.git_repo import GitRepo
from tests.support.processes import pid_alive

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, fresh_nats_server) -> Iterator[LedgerCluster]:
    cluster = start_cluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url, runners=1)
    yield cluster
    cluster.stop_all()


def workflow(first: str, pool: str = "default") -> str:
    """`first`, then a job that must never start once the run is cancelled."""
    return (f"jobs:\n  - name: first\n    pool: {pool}\n    run: {first}\n"
            "  - name: later\n    run: echo later\n")


def jobs(run: dict[str, Any]) -> list[str]:
    return [job["status"] for job in run["jobs"]]


def ran_behind(admin: Api, repo: GitRepo, repository_id: str, pool: str = "default") -> None:
    """A later run in the same pool ends: whatever the runner held before it, it has dealt with."""
    commit = repo.commit({".ledgerci.yml": workflow("'true'", pool), "behind": "1"})
    behind = admin.push(repository_id, commit).json()["run_id"]
    assert admin.wait_run(behind, timeout=60)["status"] == "succeeded", admin.explain(behind)


Cancelled = tuple[str, Callable[[], None]]  # the run to cancel, and what to do after the cancel


def pushed(admin: Api, tmp_path: Path, first: str, pool: str = "default") -> tuple[str, GitRepo, str]:
    """A new repository whose workflow is `workflow(first, pool)`, pushed: its id, the repository
    and the run."""
    repository_id, repo, commit = repository(admin, tmp_path, workflow(first, pool))
    return repository_id, repo, admin.push(repository_id, commit).json()["run_id"]


def pushed_sleeping(admin: Api, tmp_path: Path, seconds: int) -> tuple[str, GitRepo, str, int]:
    """`pushed`, its first job sleeping `seconds`, and the pid of that job's process."""
    pid_file = tmp_path / "job.pid"
    repository_id, repo, run_id = pushed(admin, tmp_path, f"echo $$ > {pid_file}; exec sleep {seconds}")
    return repository_id, repo, run_id, pid_in(pid_file)


def queued_with_no_runner_of_its_pool(cluster: LedgerCluster, admin: Api, tmp_path: Path) -> Cancelled:
    repository_id, repo, run_id = pushed(admin, tmp_path, "'true'", pool="nobody")
    admin.wait_run(run_id, until=lambda run: bool(run["jobs"]) and run["jobs"][0]["waiting"] is not None)

    def afterwards() -> None:  # a runner of the pool comes: it must not run the cancelled job
        cluster.start("runner#nobody", env={"LEDGERCI_RUNNER_POOL": "nobody"})
        ran_behind(admin, repo, repository_id, pool="nobody")
    return run_id, afterwards


def handed_to_a_frozen_runner(cluster: LedgerCluster, admin: Api, tmp_path: Path) -> Cancelled:
    marker = tmp_path / "started"
    cluster.pause("runner")  # its pull request is out: the dispatch may reach it, nothing is claimed
    repository_id, repo, run_id = pushed(admin, tmp_path, f"touch {marker}")
    admin.wait_run(run_id, until=lambda run: jobs(run)[:1] == ["queued"])

    def afterwards() -> None:
        cluster.resume("runner")
        ran_behind(admin, repo, repository_id)
        assert not marker.exists(), "the cancelled job's command ran"
    return run_id, afterwards


def running(cluster: LedgerCluster, admin: Api, tmp_path: Path) -> Cancelled:
    _, _, run_id, pid = pushed_sleeping(admin, tmp_path, seconds=60)

    def afterwards() -> None:
        wait_for(lambda: not pid_alive(pid), 2.0, "the cancelled job's process to be killed")
    return run_id, afterwards


def ended_but_not_reported(cluster: LedgerCluster, admin: Api, tmp_path: Path) -> Cancelled:
    repository_id, repo, run_id, pid = pushed_sleeping(admin, tmp_path, seconds=1)
    cluster.pause("runner")  # the job's process goes on and exits 0; its runner cannot report it
    wait_for(lambda: not pid_alive(pid), 10, "the job's process to exit while its runner is frozen")

    def afterwards() -> None:  # the runner wakes up and reports success: too late, and refused
        cluster.resume("runner")
        ran_behind(admin, repo, repository_id)
    return run_id, afterwards


def already_ended(cluster: LedgerCluster, admin: Api, tmp_path: Path) -> Cancelled:
    _, _, run_id = pushed(admin, tmp_path, "'true'")
    assert admin.wait_run(run_id)["status"] == "succeeded", admin.explain(run_id)
    return run_id, lambda: None


STATES = {
    "queued": queued_with_no_runner_of_its_pool,
    "handed-not-claimed": handed_to_a_frozen_runner,
    "running": running,
    "ended-not-reported": ended_but_not_reported,
    "already-ended": already_ended,
}


@pytest.mark.parametrize("state", list(STATES))
def test_a_cancel_in_any_state_ends_the_run_once_and_starts_nothing_later(
        state: str, tmp_path: Path, cluster: LedgerCluster) -> None:
    admin = Api(cluster.url, ADMIN_TOKEN)
    run_id, afterwards = STATES[state](cluster, admin, tmp_path)

    first = admin.http.post(f"/api/v1/runs/{run_id}/cancel")
    assert first.status_code == 200, first.text
    assert first.json()["cancelled"] is (state != "already-ended"), first.json()
    again = admin.http.post(f"/api/v1/runs/{run_id}/cancel")
    assert again.status_code == 200 and again.json()["cancelled"] is False, again.json()
    afterwards()

    run = admin.wait_run(run_id)
    history = admin.events(run_id)
    types = [event["type"] for event in history]
    if state == "already-ended":
        assert run["status"] == "succeeded" and "RunCancelled" not in types
    else:
        assert run["status"] == "cancelled", admin.explain(run_id)
        assert jobs(run) == ["cancelled", "cancelled"], admin.explain(run_id)
        assert types.count("RunCancelled") == 1
        assert {e["actor"] for e in history if e["type"] in ("RunCancelled", "JobCancelled")} == {"admin"}
        assert "JobSucceeded" not in types and "JobFailed" not in types, admin.explain(run_id)
        later_job = run["jobs"][1]["id"]
        assert not [e for e in history if e["type"] == "JobStarted" and e["data"]["job_id"] == later_job]
    if state in ("queued", "handed-not-claimed"):
        assert "JobStarted" not in types, admin.explain(run_id)
    assert_invariants(cluster)
