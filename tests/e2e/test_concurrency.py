"""Concurrency groups end to end (issue 19): a newer run cancels the running one and its process
is gone within seconds; a job that is not interruptible finishes first; `queue: single` replaces
the waiting run and says by which; and 50 pushes into one group while gateways and schedulers
are SIGKILLed never run two runs of the group at once and end every run. Every service is a
process of its own on PostgreSQL and a real nats-server; the invariant checker reads the whole
history at the end of each test."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_faults import assert_invariants, pid_in, start_cluster, wait_for
from tests.support.api import FINAL, Api
from tests.support.cluster import ADMIN_TOKEN, LedgerCluster
from tests.support.git_repo import GitRepo
from tests.support.processes import pid_alive

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, fresh_nats_server) -> Iterator[LedgerCluster]:
    cluster = start_cluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url)
    yield cluster
    cluster.stop_all()


def grouped(concurrency: str, jobs: str) -> str:
    return f"concurrency:\n{concurrency}\njobs:\n{jobs}"


def job(name: str, script: str, *, interruptible: bool = True) -> str:
    return f"  - name: {name}\n    interruptible: {str(interruptible).lower()}\n    run: {script}\n"


class GroupRepo:
    """A repository of a new tenant, pushed commit by commit (each with its own workflow file)."""

    def __init__(self, admin: Api, tmp_path: Path) -> None:
        self.admin = admin
        self.repo = GitRepo(tmp_path / "repo")
        self.commits = 0
        tenant_id, _ = admin.tenant()
        self.repository_id = admin.repository(tenant_id, self.repo.clone_url)

    def commit(self, workflow: str) -> str:
        self.commits += 1
        return self.repo.commit({".ledgerci.yml": workflow, "n": str(self.commits)})

    def push(self, workflow: str) -> str:
        response = self.admin.push(self.repository_id, self.commit(workflow))
        assert response.status_code == 202, response.text
        return response.json()["run_id"]


@pytest.fixture
def repo(tmp_path: Path, cluster: LedgerCluster) -> GroupRepo:
    return GroupRepo(Api(cluster.url, ADMIN_TOKEN), tmp_path)


def started_at(admin: Api, run_id: str) -> list[str]:
    return [e["at"] for e in admin.events(run_id) if e["type"] == "JobStarted"]


def test_a_newer_run_cancels_the_running_one_and_its_process_is_gone_within_two_seconds(
        tmp_path: Path, cluster: LedgerCluster, repo: GroupRepo) -> None:
    admin = repo.admin
    concurrency = "  group: deploy-${{ branch }}\n  cancel_in_progress: true"
    pid_file = tmp_path / "older.pid"
    older = repo.push(grouped(concurrency, job("deploy", f"echo $$ > {pid_file}; exec sleep 60") +
                              job("smoke", "echo never")))
    pid = pid_in(pid_file)
    pushed_at = time.monotonic()
    newer = repo.push(grouped(concurrency, job("deploy", "echo newer")))
    wait_for(lambda: not pid_alive(pid), 2.0, "the superseded run's process to be killed")
    assert time.monotonic() - pushed_at < 2.0

    run = admin.wait_run(older)
    assert run["status"] == "cancelled" and run["error"] == f"superseded by run {newer}"
    assert [j["status"] for j in run["jobs"]] == ["cancelled", "cancelled"]
    assert run["concurrency_group"] == "deploy-main"
    superseded = [e for e in admin.events(older) if e["type"] == "RunSuperseded"]
    assert [e["data"]["by_run"] for e in superseded] == [newer]
    assert admin.wait_run(newer)["status"] == "succeeded", admin.explain(newer)
    assert_invariants(cluster)


def test_a_job_that_is_not_interruptible_finishes_and_queue_single_replaces_the_waiting_run(
        tmp_path: Path, cluster: LedgerCluster, repo: GroupRepo) -> None:
    admin = repo.admin
    concurrency = "  group: production\n  cancel_in_progress: true"
    marker = tmp_path / "deploying"
    older = repo.push(grouped(concurrency, job("deploy", f"touch {marker}; sleep 3; echo deployed",
                                               interruptible=False) + job("smoke", "echo never")))
    wait_for(marker.exists, 30, "the deploy job to start")
    replaced = repo.push(grouped(concurrency, job("deploy", "echo replaced")))
    waiting = admin.wait_run(replaced, until=lambda r: r["waiting"] is not None or r["status"] in FINAL)
    assert waiting["waiting"] == 'waiting for concurrency group "production"', waiting
    assert waiting["jobs"][0]["status"] == "pending"
    newest = repo.push(grouped(concurrency, job("deploy", "echo newest")))

    run = admin.wait_run(replaced)
    assert run["status"] == "cancelled" and run["error"] == f"superseded by run {newest}"
    assert started_at(admin, replaced) == []
    assert [e["data"]["by_run"] for e in admin.events(replaced) if e["type"] == "RunDropped"] == [newest]

    assert admin.wait_run(newest)["status"] == "succeeded", admin.explain(newest)
    run = admin.run(older)  # superseded by the first newer run, which arrived while it deployed
    assert run["status"] == "cancelled" and run["error"] == f"superseded by run {replaced}"
    assert [j["status"] for j in run["jobs"]] == ["succeeded", "cancelled"], admin.explain(older)
    deployed = next(e["at"] for e in admin.events(older) if e["type"] == "JobSucceeded")
    assert started_at(admin, newest)[0] >= deployed, "the newer run started before the deploy job finished"
    assert_invariants(cluster)


def test_fifty_pushes_into_one_group_while_gateways_and_schedulers_are_killed(
        tmp_path: Path, postgres_url: str, fresh_nats_server) -> None:
    """Pushes go to two gateways; planning and admission run on two schedulers. A killer SIGKILLs
    one gateway or one scheduler (and starts it again) every half second or so while the 50
    pushes go in and until every run has ended. Half of the commits cancel what is in progress,
    half of those with a job that is not interruptible; the rest queue. At the end every run
    has ended, at most one run of the group ran at a time (the invariant checker, over the
    store's global order) and nothing holds the group."""
    cluster = start_cluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url)
    try:
        for name in ("gateway#2", "scheduler#2"):
            cluster.start(name)
        admin = Api(cluster.url, ADMIN_TOKEN)
        repo = GroupRepo(admin, tmp_path)
        queued = grouped("  group: serial\n  queue: max", job("build", "sleep 0.05"))
        files = [queued, queued,
                 grouped("  group: serial\n  cancel_in_progress: true\n  queue: max",
                         job("build", "sleep 0.05") + job("publish", "'true'")),
                 grouped("  group: serial\n  cancel_in_progress: true\n  queue: max",
                         job("deploy", "sleep 0.2", interruptible=False))]
        rng = random.Random(19)
        commits = [repo.commit(rng.choice(files)) for _ in range(50)]
        gateways = ["gateway", "gateway#2"]
        # Kinds alternate, so both gateways and schedulers die while the pushes go in whatever
        # the draws; the killer has its own generator (one shared with this thread would make
        # the draws depend on how the threads interleave).
        victims = itertools.cycle([gateways, ["scheduler", "scheduler#2"]])
        killer_rng = random.Random(23)
        stop = threading.Event()
        kills: list[str] = []

        def killer() -> None:
            while not stop.wait(killer_rng.uniform(0.3, 0.8)):
                victim = killer_rng.choice(next(victims))
                cluster.kill(victim)
                kills.append(victim)
                cluster.start(victim)

        def push(commit: str, attempt: int) -> httpx.Response | None:
            try:
                return httpx.post(f"{cluster.gateway_url(gateways[attempt % 2])}/api/v1/push", timeout=10,
                                  json={"repository_id": repo.repository_id, "commit": commit,
                                        "ref": "refs/heads/main"},
                                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            except httpx.HTTPError:
                return None  # that gateway is being restarted: the next try goes to the other

        def status(run_id: str) -> str | None:
            for gateway in gateways:  # whichever is up
                try:
                    return httpx.get(f"{cluster.gateway_url(gateway)}/api/v1/runs/{run_id}", timeout=5,
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()["status"]
                except (httpx.HTTPError, ValueError, KeyError):
                    continue
            return None

        thread = threading.Thread(target=killer)
        thread.start()
        run_ids: list[str] = []
        try:
            for commit in commits:
                tries = iter(range(10_000))
                answered: Any = wait_for(lambda c=commit, t=tries: (r := push(c, next(t))) is not None
                                         and r.status_code in (200, 202) and r, 60, "a push to be answered")
                run_ids.append(answered.json()["run_id"])
                time.sleep(rng.uniform(0, 0.2))  # the pushes spread over the kills
            kills_while_pushing = list(kills)
            wait_for(lambda: all(status(run_id) in FINAL for run_id in run_ids), 240, "every run of the group to end")
        finally:
            stop.set()
            thread.join()
        assert len(set(run_ids)) == 50
        assert {"gateway", "scheduler"} <= {victim.split("#")[0] for victim in kills_while_pushing}, kills
        runs = [admin.run(run_id) for run_id in run_ids]
        assert all(run["concurrency_group"] == "serial" for run in runs)
        statuses = [run["status"] for run in runs]
        assert statuses[-1] == "succeeded", admin.explain(run_ids[-1])
        assert set(statuses) <= {"succeeded", "cancelled"}, statuses
        superseded = [run for run in runs if run["status"] == "cancelled"]
        assert all(run["error"].startswith("superseded by run ") for run in superseded)
        print(f"50 pushes into one group, {len(kills)} kills ({len(kills_while_pushing)} while pushing): "
              f"{statuses.count('succeeded')} succeeded, "
              f"{len(superseded)} superseded")
        assert_invariants(cluster)
    finally:
        cluster.stop_all()


def test_a_job_level_group_runs_one_deploy_at_a_time_while_the_other_jobs_run_side_by_side(
        tmp_path: Path, cluster: LedgerCluster, repo: GroupRepo) -> None:
    admin = repo.admin
    # Builds long enough to overlap however loaded the machine is (two runners take them at once).
    workflow = ("jobs:\n" + job("build", "sleep 4") + job("deploy", "sleep 1") + "    concurrency: production\n"
                + job("smoke", "'true'"))
    runs = [repo.push(workflow), repo.push(workflow)]
    for run_id in runs:
        assert admin.wait_run(run_id, timeout=60)["status"] == "succeeded", admin.explain(run_id)

    def window(run_id: str, name: str) -> tuple[str, str]:
        job_id = next(j["id"] for j in admin.run(run_id)["jobs"] if j["name"] == name)
        events = [e for e in admin.events(run_id) if e["data"].get("job_id") == job_id]
        return (next(e["at"] for e in events if e["type"] == "JobStarted"),
                next(e["at"] for e in events if e["type"] == "JobSucceeded"))

    builds = sorted(window(run_id, "build") for run_id in runs)
    assert builds[1][0] < builds[0][1], f"the builds did not run side by side: {builds}"
    deploys = sorted(window(run_id, "deploy") for run_id in runs)
    assert deploys[1][0] >= deploys[0][1], f"two deploys of the group overlapped: {deploys}"
    assert_invariants(cluster)
