"""A push runs its jobs in order, end to end: every service a separate process, on
PostgreSQL and a real nats-server, with the local executor."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats
import psycopg
import pytest
from nats.js.errors import ServiceUnavailableError

from domain.ids import token_aggregate_id
from domain.messages import EVENTS_STREAM
from tests.support.api import Api
from tests.support.cluster import LedgerCluster
from tests.support.fairness import wait_until
from tests.support.git_repo import GitRepo

T = TypeVar("T")

pytestmark = pytest.mark.e2e

THREE_JOBS = """\
name: three
env:
  FROM_FILE: workflow-env
jobs:
  - name: first
    run: |
      echo "first sees $(cat hello.txt)"
      echo "run=$LEDGERCI_RUN_ID job=$LEDGERCI_JOB_ID name=$LEDGERCI_JOB_NAME attempt=$LEDGERCI_ATTEMPT"
      echo "repo=$LEDGERCI_REPOSITORY_ID commit=$LEDGERCI_COMMIT ref=$LEDGERCI_REF ci=$CI key=$LEDGERCI_IDEMPOTENCY_KEY"
      echo "env=$FROM_FILE"
  - name: second
    run: echo "second sees $(cat hello.txt)"
  - name: third
    run: echo "third sees $(cat hello.txt)"
"""


def make_repo(tmp_path: Path, workflow: str, name: str = "repo") -> tuple[GitRepo, str]:
    repo = GitRepo(tmp_path / name)
    commit = repo.commit({".ledgerci.yml": workflow, "hello.txt": "the commit's file"})
    return repo, commit


def test_push_runs_three_jobs_in_order(tmp_path: Path, admin: Api):
    repo, commit = make_repo(tmp_path, THREE_JOBS)
    tenant_id, token = admin.tenant()
    repository_id = admin.repository(tenant_id, repo.clone_url)
    tenant = Api(admin.url, token)

    pushed = tenant.push(repository_id, commit)
    assert pushed.status_code == 202, pushed.text
    body = pushed.json()
    assert body["duplicate"] is False

    run = tenant.wait_run(body["run_id"])
    assert run["status"] == "succeeded", tenant.explain(run["id"])
    assert (run["id"], run["repository_id"], run["tenant_id"], run["commit"], run["ref"]) == (
        body["run_id"], repository_id, tenant_id, commit, "refs/heads/main")
    assert run["finished_at"] and run["created_at"] and run["error"] is None
    jobs = run["jobs"]
    assert [j["name"] for j in jobs] == ["first", "second", "third"]
    for job in jobs:
        assert job["status"] == "succeeded" and job["exit_code"] == 0 and job["attempt"] == 1
        assert job["runner_id"] and job["queued_at"] and job["started_at"] and job["finished_at"]
    for before, after in itertools.pairwise(jobs):
        assert after["started_at"] >= before["finished_at"], "a job started before the one before it ended"

    first_log = tenant.log(jobs[0]["id"])
    assert "first sees the commit's file" in first_log
    assert f"run={run['id']} job={jobs[0]['id']} name=first attempt=1" in first_log
    assert f"repo={repository_id} commit={commit} ref=refs/heads/main ci=true" in first_log
    assert f"key={run['id']}:{jobs[0]['id']}" in first_log
    assert "env=workflow-env" in first_log
    assert "second sees the commit's file" in tenant.log(jobs[1]["id"])
    assert "third sees the commit's file" in tenant.log(jobs[2]["id"])

    history = tenant.events(run["id"])
    types = [e["type"] for e in history]
    # The planner read the commit and planned the run in one decision.
    assert types[:4] == ["RunRequested", "CommitRead", "RunPlanned", "JobQueued"]
    assert (run["commit_subject"], run["commit_author"]) == ("change", "ledgerci-test <test@ledgerci.invalid>")
    assert types[-1] == "RunSucceeded"
    assert [e["version"] for e in history] == list(range(1, len(history) + 1))
    assert history[0]["actor"] == f"tenant:{tenant_id} token:{token_aggregate_id(token)}"  # which token pushed
    started = [e for e in history if e["type"] == "JobStarted"]
    assert [e["data"]["attempt"] for e in started] == [1, 1, 1]
    assert all(e["actor"].startswith("runner:") for e in started)
    assert all((e["data"]["executor"], e["data"]["pool"]) == ("local", "default") for e in started)  # where
    only_first = tenant.http.get(f"/api/v1/runs/{run['id']}/events",
                                 params={"job_id": jobs[0]["id"], "type": "JobStarted"}).json()["events"]
    assert only_first == [started[0]]

    # Replayed from the history, not read from the read model: the run as it was then.
    def as_of(value) -> dict:
        response = tenant.http.get(f"/api/v1/runs/{run['id']}", params={"as_of": value})
        assert response.status_code == 200, response.text
        return response.json()

    assert (as_of(1)["status"], as_of(1)["jobs"]) == ("queued", [])
    first_running = as_of(started[0]["version"])
    assert [j["status"] for j in first_running["jobs"]] == ["running", "pending", "pending"]
    assert first_running["status"] == "running"
    last = as_of(history[-1]["version"])
    # Replayed to its last version, the run is the run; the answer also says which version it is.
    assert (last.pop("as_of_version"), last.pop("latest_version")) == (len(history), len(history))
    assert last.pop("as_of_at") == history[-1]["at"]
    assert last == run
    too_far = tenant.http.get(f"/api/v1/runs/{run['id']}", params={"as_of": len(history) + 1})
    assert too_far.status_code == 404 and f"its versions are 1 to {len(history)}" in too_far.json()["detail"]
    assert as_of(started[1]["at"])["jobs"][1]["status"] == "running"
    assert tenant.http.get(f"/api/v1/runs/{run['id']}", params={"as_of": "yesterday"}).status_code == 422


def test_same_push_again_answers_the_existing_run_and_runs_nothing(tmp_path: Path, admin: Api):
    repo, commit = make_repo(tmp_path, "jobs:\n  - name: once\n    run: echo once\n")
    tenant_id, _ = admin.tenant()
    repository_id = admin.repository(tenant_id, repo.clone_url)
    first = admin.push(repository_id, commit).json()
    admin.wait_run(first["run_id"])
    again = admin.push(repository_id, commit)
    assert again.status_code == 200
    assert again.json() == {"run_id": first["run_id"], "duplicate": True}
    history = admin.events(first["run_id"])
    assert [e["type"] for e in history].count("JobStarted") == 1
    assert [e["type"] for e in history].count("RunRequested") == 1


def test_failing_job_fails_the_run_skips_later_jobs_and_runs_when_always(tmp_path: Path, admin: Api):
    workflow = """\
jobs:
  - name: ok
    run: "true"
  - name: broken
    run: |
      echo "about to fail"
      exit 3
  - name: never
    run: echo never
  - name: cleanup
    when: always
    run: echo cleaning up
"""
    repo, commit = make_repo(tmp_path, workflow)
    tenant_id, _ = admin.tenant()
    repository_id = admin.repository(tenant_id, repo.clone_url)
    run = admin.wait_run(admin.push(repository_id, commit).json()["run_id"])
    assert run["status"] == "failed"
    by_name = {j["name"]: j for j in run["jobs"]}
    assert by_name["ok"]["status"] == "succeeded"
    assert (by_name["broken"]["status"], by_name["broken"]["exit_code"]) == ("failed", 3)
    assert by_name["never"]["status"] == "skipped"
    assert by_name["cleanup"]["status"] == "succeeded"
    assert "cleaning up" in admin.log(by_name["cleanup"]["id"])
    assert "about to fail" in admin.log(by_name["broken"]["id"])


def test_invalid_workflow_fails_the_run_before_any_job_naming_line_and_field(tmp_path: Path, admin: Api):
    workflow = "jobs:\n  - name: build\n    run: make\n    timout: 5m\n"
    repo, commit = make_repo(tmp_path, workflow)
    tenant_id, _ = admin.tenant()
    repository_id = admin.repository(tenant_id, repo.clone_url)
    run = admin.wait_run(admin.push(repository_id, commit).json()["run_id"])
    assert run["status"] == "failed"
    assert run["jobs"] == []
    assert "line 4" in run["error"] and "jobs[0].timout" in run["error"], run["error"]


def test_bad_requests_get_clear_4xx_answers(tmp_path: Path, admin: Api):
    repo, commit = make_repo(tmp_path, "jobs:\n  - name: a\n    run: 'true'\n")
    tenant_id, token = admin.tenant()
    repository_id = admin.repository(tenant_id, repo.clone_url)

    unknown = admin.push("no-such-repository", commit)
    assert unknown.status_code == 404 and "no-such-repository" in unknown.json()["detail"]

    for body in ({"repository_id": repository_id, "commit": "not-a-sha"}, {"commit": commit},
                 {"repository_id": repository_id, "commit": commit, "extra": 1}):
        malformed = admin.http.post("/api/v1/push", json=body)
        assert malformed.status_code == 422, (body, malformed.text)
        assert malformed.json()["status_code"] == 422
    not_json = admin.http.post("/api/v1/push", content=b"{nope", headers={"Content-Type": "application/json"})
    assert not_json.status_code in (400, 422)

    for client in (admin.as_token(None), admin.as_token("wrong-token")):
        assert client.post("/api/v1/push", json={"repository_id": repository_id, "commit": commit}).status_code == 401
        assert client.get("/api/v1/runs").status_code == 401
    assert admin.as_token(None).get("/healthz").status_code == 200

    # Another tenant's repository and run answer 404, exactly as absent ones do.
    run_id = admin.push(repository_id, commit).json()["run_id"]
    admin.wait_run(run_id)
    _, other_token = admin.tenant()
    other = Api(admin.url, other_token)
    assert other.push(repository_id, commit).status_code == 404
    assert other.http.get(f"/api/v1/runs/{run_id}").status_code == 404
    assert other.http.get(f"/api/v1/runs/{run_id}/events").status_code == 404
    assert other.http.get("/api/v1/runs").json()["runs"] == []
    job_id = admin.run(run_id)["jobs"][0]["id"]
    assert other.http.get(f"/api/v1/jobs/{job_id}/log").status_code == 404
    assert Api(admin.url, token).http.get(f"/api/v1/runs/{run_id}").status_code == 200


@pytest.mark.parametrize("victim", ["relay", "projector", "scheduler"])
def test_killing_a_service_mid_run_loses_and_duplicates_nothing(
    tmp_path: Path, admin: Api, cluster: LedgerCluster, victim: str
):
    workflow = "jobs:\n" + "".join(
        f"  - name: step{i}\n    run: sleep 0.3; echo step{i}\n" for i in range(5)
    )
    repo, commit = make_repo(tmp_path, workflow)
    tenant_id, _ = admin.tenant()
    repository_id = admin.repository(tenant_id, repo.clone_url)
    run_id = admin.push(repository_id, commit).json()["run_id"]

    # Kill it once the second job is under way, and again once the fourth is.
    for job_index in (1, 3):
        admin.wait_run(run_id, until=lambda r, i=job_index: len(r["jobs"]) == 5 and r["jobs"][i]["status"] != "pending")
        cluster.kill(victim)
        cluster.start(victim)

    run = admin.wait_run(run_id, timeout=90)
    assert run["status"] == "succeeded"
    assert [j["status"] for j in run["jobs"]] == ["succeeded"] * 5
    history = admin.events(run_id)
    types = [e["type"] for e in history]
    assert types.count("JobStarted") == 5 and types.count("JobSucceeded") == 5
    assert types.count("RunSucceeded") == 1
    assert [e["version"] for e in history] == list(range(1, len(history) + 1))

    # The EVENTS stream holds every stored event exactly once, in the store's order. The relay
    # follows the store on its own: the run reads as finished (the projector follows the store
    # too) before the relay, restarted a moment ago, has published the last events, so wait
    # for it to catch up; a duplicate or a gap would never be repaired by waiting.
    stored = store_positions(cluster.env["LEDGERCI_DATABASE_URL"])

    def relay_caught_up() -> bool:
        published = asyncio.run(stream_positions(cluster.env["LEDGERCI_NATS_URL"]))
        assert published == sorted(set(published)), "a position was published twice or out of order"
        assert published == stored[: len(published)], "the stream holds a position the store does not"
        return published == stored

    wait_until(relay_caught_up, 30, "the relay to publish every stored event")


async def stream_positions(nats_url: str) -> list[int]:
    nc = await nats.connect(servers=nats_url.split(","))
    try:
        js = nc.jetstream()
        info = await _answered(lambda: js.stream_info(EVENTS_STREAM))
        positions: list[int] = []
        if info.state.messages == 0:
            return positions  # an empty stream reports first_seq 0, which get_msg refuses
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await _answered(lambda seq=seq: js.get_msg(EVENTS_STREAM, seq))
            positions.append(int(message.headers["Nats-Msg-Id"]))
        return positions
    finally:
        await nc.close()


async def _answered(request: Callable[[], Awaitable[T]]) -> T:
    """A JetStream API call, asked again while a server that just restarted says "no responders"."""
    for _ in range(50):
        try:
            return await request()
        except ServiceUnavailableError:
            await asyncio.sleep(0.1)
    return await request()


def store_positions(database_url: str) -> list[int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT notification_id FROM ledgerci_events ORDER BY notification_id").fetchall()
    return [row[0] for row in rows]
