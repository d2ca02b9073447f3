"""Commit statuses back to the git host (issue 21), end to end: a small real HTTP server in the
test plays GitHub's and GitLab's status APIs. It sees pending then success for a good run and
failure for a failed one; the final state arrives after the status sender (in the projector
process) was SIGKILLed and started again, and after the host answered 500 three times; the
attempts show in the API. GitLab hears its own words, `running` included, and the end of a run
that was cancelled or whose runner was SIGKILLed (`canceled`, `failed`). By default a target on
a private address is refused. Every service a process of its own on PostgreSQL and a real
nats-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_faults import FAULT_ENV, assert_invariants, wait_for
from tests.support.api import Api
from tests.support.cluster import ADMIN_TOKEN, OUTBOUND_TO_LOOPBACK, LedgerCluster
from tests.support.git_repo import GitRepo
from tests.support.receiver import Receiver

pytestmark = pytest.mark.e2e

GOOD = "name: build\njobs:\n  - name: compile\n    run: echo compiled\n"
BAD = "name: build\njobs:\n  - name: compile\n    run: exit 3\n"
HELD = "name: build\njobs:\n  - name: compile\n    run: sleep 120\n"  # running until cancelled or lost
TOKEN = "host-api-token-1234"


class StatusHost(Receiver):
    """GitHub's or GitLab's "create a commit status" endpoint, recording what it is sent."""

    def states(self, commit: str) -> list[str]:
        return [r.body["state"] for r in self.received if r.path.endswith(f"/statuses/{commit}")]


@pytest.fixture
def status_host() -> Iterator[StatusHost]:
    host = StatusHost()
    yield host
    host.close()


def repository_with_target(admin: Api, tmp_path: Path, kind: str, api_url: str) -> tuple[Api, str, GitRepo]:
    tenant_id, token = admin.tenant()
    owner = Api(admin.url, token)
    repo = GitRepo(tmp_path / f"repo-{kind}")
    repository_id = admin.repository(tenant_id, repo.clone_url)
    answer = owner.http.put(f"/api/v1/repositories/{repository_id}/status-target",
                            json={"kind": kind, "api_url": api_url, "project": "org/app", "token": TOKEN})
    assert answer.status_code == 200, answer.text
    assert "token" not in answer.json()
    return owner, repository_id, repo


def pushed(owner: Api, repository_id: str, repo: GitRepo, workflow: str, n: int) -> tuple[str, str]:
    commit = repo.commit({".ledgerci.yml": workflow, "n": str(n)})
    return owner.push(repository_id, commit).json()["run_id"], commit


def test_github_sees_pending_then_success_or_failure_and_gitlab_its_own_states(
        tmp_path: Path, allowing: LedgerCluster, status_host: StatusHost) -> None:
    admin = Api(allowing.url, ADMIN_TOKEN)
    owner, repository_id, repo = repository_with_target(admin, tmp_path, "github", status_host.url)
    good, good_commit = pushed(owner, repository_id, repo, GOOD, 1)
    _, bad_commit = pushed(owner, repository_id, repo, BAD, 2)
    wait_for(lambda: status_host.states(good_commit)[-1:] == ["success"], 30, "success on the good commit")
    wait_for(lambda: status_host.states(bad_commit)[-1:] == ["failure"], 30, "failure on the bad commit")
    for commit in (good_commit, bad_commit):  # a state overtaken before it was sent is passed over
        states = status_host.states(commit)
        assert set(states[:-1]) <= {"pending"}, states
    sent = next(r for r in status_host.received if r.path.endswith(good_commit))
    assert sent.path == f"/repos/org/app/statuses/{good_commit}"
    assert sent.headers["Authorization"] == f"token {TOKEN}"
    assert sent.body["context"] == "ledgerci/build" and sent.body["target_url"].endswith(f"/#/runs/{good}")
    wait_for(lambda: owner.http.get(f"/api/v1/runs/{good}/statuses").json()["statuses"][-1]["delivered_at"],
             30, "the success to be marked delivered")
    listed = owner.http.get(f"/api/v1/runs/{good}/statuses").json()["statuses"]
    assert listed[-1]["state"] == "success" and listed[-1]["last_result"] == "HTTP 201"

    # The same commit tagged: a run of its own, whose states go under a context of their own.
    tag_run = owner.push(repository_id, good_commit, "refs/tags/v1.0").json()["run_id"]
    assert tag_run != good and admin.wait_run(tag_run)["status"] == "succeeded"
    wait_for(lambda: [r.body["state"] for r in status_host.received
                      if r.body.get("context") == "ledgerci/build (v1.0)"][-1:] == ["success"], 30, "the tag's success")
    branch_states = [r.body["state"] for r in status_host.received if r.body.get("context") == "ledgerci/build"
                     and r.path.endswith(good_commit)]
    assert branch_states[-1] == "success"

    gl_owner, gl_repository, gl_repo = repository_with_target(admin, tmp_path, "gitlab", status_host.url)
    _, gl_commit = pushed(gl_owner, gl_repository, gl_repo, GOOD, 9)  # not the GitHub commit's sha
    wait_for(lambda: status_host.states(gl_commit)[-1:] == ["success"], 30, "success on GitLab")
    sent = next(r for r in status_host.received if r.path.endswith(gl_commit))
    assert sent.path == f"/projects/org%2Fapp/statuses/{gl_commit}"
    assert sent.headers["PRIVATE-TOKEN"] == TOKEN and sent.body["name"] == "ledgerci/build"
    assert_invariants(allowing)


def test_the_final_state_arrives_after_500s_and_after_the_sender_is_killed(
        tmp_path: Path, allowing: LedgerCluster, status_host: StatusHost) -> None:
    admin = Api(allowing.url, ADMIN_TOKEN)
    owner, repository_id, repo = repository_with_target(admin, tmp_path, "github", status_host.url)

    # The host answers 500 three times: the statuses still arrive, the attempts show.
    status_host.failures_left = 3
    first, first_commit = pushed(owner, repository_id, repo, GOOD, 1)
    wait_for(lambda: status_host.states(first_commit)[-1:] == ["success"], 60, "success after three 500s")
    listed = owner.http.get(f"/api/v1/runs/{first}/statuses").json()["statuses"]
    assert sum(row["attempts"] for row in listed) >= 4, listed

    # The host is down while a run ends, and the sender is SIGKILLed with the final state unsent.
    status_host.failures_left = 10_000
    second, second_commit = pushed(owner, repository_id, repo, BAD, 2)
    assert admin.wait_run(second)["status"] == "failed"
    wait_for(lambda: any(row["state"] == "failure" and row["attempts"] >= 1 and row["delivered_at"] is None
                         for row in owner.http.get(f"/api/v1/runs/{second}/statuses").json()["statuses"]),
             30, "the final state to be tried and refused")
    allowing.kill("projector")
    status_host.failures_left = 0
    allowing.start("projector")
    wait_for(lambda: status_host.states(second_commit)[-1:] == ["failure"], 60, "failure after the restart")
    assert_invariants(allowing)


def test_gitlab_hears_running_and_the_end_of_a_cancelled_run_and_of_one_whose_runner_was_killed(
        tmp_path: Path, postgres_url: str, fresh_nats_server, status_host: StatusHost) -> None:
    # Short leases (test_faults'), so the reaper finds the killed runner's attempt lost soon; 5 s
    # rather than 2, so a heartbeat late on a busy machine does not end the held job first.
    cluster = LedgerCluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url,
                            extra_env={**OUTBOUND_TO_LOOPBACK, **FAULT_ENV, "LEDGERCI_LEASE_SECONDS": "5"})
    with cluster.running():
        admin = Api(cluster.url, ADMIN_TOKEN)
        owner, repository_id, repo = repository_with_target(admin, tmp_path, "gitlab", status_host.url)

        cancelled, cancelled_commit = pushed(owner, repository_id, repo, HELD, 1)
        wait_for(lambda: "running" in status_host.states(cancelled_commit), 30, "running on GitLab")
        answer = owner.http.post(f"/api/v1/runs/{cancelled}/cancel")
        assert answer.status_code == 200 and answer.json()["cancelled"], answer.text
        wait_for(lambda: status_host.states(cancelled_commit)[-1:] == ["canceled"], 30, "canceled on GitLab")
        # (pending may be passed over: overtaken by running before it was sent)
        assert status_host.states(cancelled_commit) in (["pending", "running", "canceled"], ["running", "canceled"])

        _, bad_commit = pushed(owner, repository_id, repo, BAD, 2)
        wait_for(lambda: status_host.states(bad_commit)[-1:] == ["failed"], 30, "failed on GitLab")
        assert set(status_host.states(bad_commit)[:-1]) <= {"pending", "running"}, status_host.states(bad_commit)

        lost, lost_commit = pushed(owner, repository_id, repo, HELD, 3)
        wait_for(lambda: "running" in status_host.states(lost_commit), 30, "the third run running")
        cluster.kill("runner")  # its attempt is found lost once its lease passes: the run fails
        run = admin.wait_run(lost)
        assert run["status"] == "failed" and run["jobs"][0]["error"] == "runner lost", run
        wait_for(lambda: status_host.states(lost_commit)[-1:] == ["failed"], 30, "failed after the lost runner")
        wait_for(lambda: owner.http.get(f"/api/v1/runs/{lost}/statuses").json()["statuses"][-1]["delivered_at"],
                 30, "the failure to be marked delivered")
        assert owner.http.get(f"/api/v1/runs/{lost}/statuses").json()["statuses"][-1]["state"] == "failure"
        cluster.start("runner")
        assert_invariants(cluster)


def test_a_status_target_on_a_private_address_is_refused_by_default(
        tmp_path: Path, cluster: LedgerCluster, status_host: StatusHost) -> None:
    admin = Api(cluster.url, ADMIN_TOKEN)
    owner, repository_id, repo = repository_with_target(admin, tmp_path, "github", status_host.url)
    run_id, commit = pushed(owner, repository_id, repo, GOOD, 1)
    assert admin.wait_run(run_id)["status"] == "succeeded"
    wait_for(lambda: any((row["last_result"] or "").startswith("refused: 127.0.0.1 is a private address")
                         for row in owner.http.get(f"/api/v1/runs/{run_id}/statuses").json()["statuses"]),
             30, "the private target to be refused")
    assert status_host.states(commit) == []
