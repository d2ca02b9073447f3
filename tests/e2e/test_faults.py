"""Exactly-once under faults: every promise of ARCHITECTURE.md, with the fault injected.

Every service is a separate process on PostgreSQL and a real nats-server; faults are real
signals (SIGKILL, SIGSTOP/SIGCONT) and real server crashes. Every test ends with the invariant
checker reading the full event history.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgspec
import nats
import pytest

from domain.messages import DEAD_STREAM, JOBS_STREAM, JobDispatch, jobs_subject
from tests.e2e.test_walking_skeleton import store_positions, stream_positions
from tests.support.api import FINAL, Api
from tests.support.cluster import ADMIN_TOKEN, LedgerCluster
from tests.support.git_repo import GitRepo
from tests.support.invariants import check_invariants
from tests.support.processes import pid_alive

pytestmark = pytest.mark.e2e

LEASE_SECONDS = 2.0
FAULT_ENV = {
    "LEDGERCI_LEASE_SECONDS": str(LEASE_SECONDS),
    "LEDGERCI_REAPER_INTERVAL_SECONDS": "0.2",
    "LEDGERCI_REOFFER_AFTER_SECONDS": "3",
    "LEDGERCI_RUNNER_SLOTS": "1",
}


def start_cluster(base: Path, database_url: str, nats_url: str, runners: int = 2) -> LedgerCluster:
    cluster = LedgerCluster(base, database_url, nats_url, extra_env=FAULT_ENV)
    base.mkdir(parents=True, exist_ok=True)
    # Two reapers: any number may run at once without double effects.
    for name in ("relay", "projector", "scheduler", "reaper", "reaper#2", "gateway"):
        cluster.start(name)
    for index in range(runners):
        cluster.start("runner" if index == 0 else f"runner#{index + 1}")
    return cluster


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, fresh_nats_server) -> Iterator[LedgerCluster]:
    cluster = start_cluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url)
    yield cluster
    cluster.stop_all()


@pytest.fixture
def admin(cluster: LedgerCluster) -> Api:
    return Api(cluster.url, ADMIN_TOKEN)


def repository(admin: Api, tmp_path: Path, workflow: str, name: str = "repo") -> tuple[str, GitRepo, str]:
    repo = GitRepo(tmp_path / name)
    commit = repo.commit({".ledgerci.yml": workflow})
    tenant_id, _ = admin.tenant()
    return admin.repository(tenant_id, repo.clone_url), repo, commit


TWO_JOBS = "jobs:\n  - name: a\n    run: 'true'\n  - name: b\n    run: 'true'\n"


def many_commits(admin: Api, tmp_path: Path, count: int, workflow: str = TWO_JOBS) -> tuple[str, list[str]]:
    """A repository of a new tenant with `count` commits of `workflow`."""
    repo = GitRepo(tmp_path / "repo")
    tenant_id, _ = admin.tenant()
    commits = [repo.commit({".ledgerci.yml": workflow, "n": str(i)}) for i in range(count)]
    return admin.repository(tenant_id, repo.clone_url), commits


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def pid_in(path: Path) -> int:
    return wait_for(lambda: path.exists() and path.read_text().strip() and int(path.read_text()), 30, f"{path}")


def slow_first_attempt(pid_file: Path, retries: int, timeout: str = "60m") -> str:
    return (
        "jobs:\n  - name: slow\n"
        f"    retries: {retries}\n    timeout: {timeout}\n    run: |\n"
        f"      if [ \"$LEDGERCI_ATTEMPT\" = 1 ]; then echo $$ > {pid_file}; exec sleep 60; fi\n"
        "      echo \"attempt $LEDGERCI_ATTEMPT done\"\n"
    )


def assert_invariants(cluster: LedgerCluster) -> None:
    # The read model is compared at its own tracked position, so no waiting is needed.
    assert check_invariants(cluster.env["LEDGERCI_DATABASE_URL"]) == []


def test_stale_runner_is_fenced_and_its_process_killed(tmp_path: Path, cluster: LedgerCluster, admin: Api):
    pid_file = tmp_path / "attempt1.pid"
    repository_id, _, commit = repository(admin, tmp_path, slow_first_attempt(pid_file, retries=1))
    run_id = admin.push(repository_id, commit).json()["run_id"]
    pid = pid_in(pid_file)
    holder = admin.run(run_id)["jobs"][0]["runner_id"]
    process_name = cluster.runner_service(holder)

    cluster.pause(process_name)  # SIGSTOP: alive, but silent past its lease
    run = admin.wait_run(run_id, timeout=30)
    assert run["status"] == "succeeded"
    job = run["jobs"][0]
    assert job["attempt"] == 2 and job["runner_id"] != holder
    assert pid_alive(pid), "attempt 1's process should still be running while its runner is stopped"

    cluster.resume(process_name)  # SIGCONT: its heartbeat is refused, it kills the job
    wait_for(lambda: not pid_alive(pid), 10, "attempt 1's process to be killed")
    history = admin.events(run_id)
    assert [e["type"] for e in history].count("JobSucceeded") == 1
    abandoned = [e for e in history if e["type"] == "JobAttemptAbandoned"]
    assert [(e["data"]["attempt"], e["data"]["reason"]) for e in abandoned] == [(1, "runner lost")]
    time.sleep(LEASE_SECONDS)  # let the revived runner try to report, if it (wrongly) would
    assert admin.events(run_id) == history
    assert_invariants(cluster)


def test_stopped_runner_hands_its_job_back_after_the_grace_period(tmp_path: Path, cluster: LedgerCluster,
                                                                  admin: Api):
    """SIGTERM: no new job, the running one gets the grace period, then is killed and handed
    back; it runs again elsewhere without using a retry (it has none)."""
    cluster.kill("runner#2")
    cluster.kill("runner")
    cluster.start("runner#3", env={"LEDGERCI_STOP_GRACE_SECONDS": "1"})
    pid_file = tmp_path / "attempt1.pid"
    repository_id, _, commit = repository(admin, tmp_path, slow_first_attempt(pid_file, retries=0))
    run_id = admin.push(repository_id, commit).json()["run_id"]
    pid = pid_in(pid_file)
    cluster.start("runner#2")
    took = cluster.stop("runner#3")
    assert took < 1 + 3.0, f"the runner took {took:.1f}s to stop with a 1s grace period"
    assert not pid_alive(pid)
    run = admin.wait_run(run_id, timeout=30)
    job = run["jobs"][0]
    assert (run["status"], job["attempt"], job["runner_id"]) == ("succeeded", 2, cluster.runner_id("runner#2"))
    history = admin.events(run_id)
    abandoned = [(e["data"]["attempt"], e["data"]["reason"], e["actor"]) for e in history
                 if e["type"] == "JobAttemptAbandoned"]
    assert abandoned == [(1, "runner stopped", f"runner:{cluster.runner_id('runner#3')}")]
    assert_invariants(cluster)


def test_stopped_runner_finishes_a_job_that_ends_within_the_grace_period(tmp_path: Path, cluster: LedgerCluster,
                                                                         admin: Api):
    cluster.kill("runner#2")
    started = tmp_path / "started"
    workflow = f"jobs:\n  - name: short\n    run: touch {started}; sleep 2; echo finished\n"
    repository_id, _, commit = repository(admin, tmp_path, workflow)
    run_id = admin.push(repository_id, commit).json()["run_id"]
    wait_for(started.exists, 30, "the job to start")
    took = cluster.stop("runner")
    run = admin.wait_run(run_id, timeout=10)
    job = run["jobs"][0]
    assert (run["status"], job["attempt"], job["runner_id"]) == ("succeeded", 1, cluster.runner_id())
    assert "finished" in admin.log(job["id"])
    assert 1.0 < took < 20, took  # it waited for the job, and no longer
    assert_invariants(cluster)


def test_a_runner_told_to_stop_with_a_dispatch_in_flight_neither_loses_it_nor_leaves_an_empty_attempt(
        tmp_path: Path, cluster: LedgerCluster, admin: Api):
    """GitLab's runner once dropped a job it had been handed when it shut down gracefully: the
    job failed with an empty log. Here the only runner is frozen while the dispatch reaches it,
    and told to stop (SIGTERM, then SIGCONT) with the message unread. It stops without running
    it or runs it within its grace period; either way the job runs once and succeeds, no
    attempt fails, and an attempt it gave back used no retry."""
    cluster.kill("runner#2")
    marker = tmp_path / "ran"
    workflow = f"jobs:\n  - name: only\n    run: echo \"$LEDGERCI_RUNNER_ID\" >> {marker}; echo done\n"
    repository_id, _, commit = repository(admin, tmp_path, workflow)
    wait_for(lambda: "serves pool" in cluster.log_path("runner").read_text(), 30, "the runner to be up")
    cluster.pause("runner")  # its pull request is out: the dispatch can reach it, unread
    run_id = admin.push(repository_id, commit).json()["run_id"]
    admin.wait_run(run_id, until=lambda run: bool(run["jobs"]) and run["jobs"][0]["status"] == "queued")
    stopping = cluster.processes["runner"]
    stopping.send_signal(signal.SIGTERM)
    cluster.resume("runner")
    assert stopping.wait(timeout=30) == 0, cluster.log_path("runner").read_text()[-3000:]
    cluster.processes.pop("runner")
    cluster.start("runner#2")

    run = admin.wait_run(run_id, timeout=60)
    assert run["status"] == "succeeded", admin.explain(run_id)
    history = admin.events(run_id)
    assert [e["type"] for e in history].count("JobSucceeded") == 1
    assert not [e for e in history if e["type"] == "JobFailed"]
    abandoned = [e["data"]["kind"] for e in history if e["type"] == "JobAttemptAbandoned"]
    assert set(abandoned) <= {"runner_stopped"}, admin.explain(run_id)
    assert len(marker.read_text().split()) == 1, "the job's command ran more than once"
    job = run["jobs"][0]
    assert "done" in admin.log(job["id"])
    assert_invariants(cluster)


@pytest.mark.parametrize("retries", [1, 0])
def test_killed_runner_job_is_retried_or_fails_runner_lost(tmp_path: Path, cluster: LedgerCluster, admin: Api,
                                                          retries: int):
    pid_file = tmp_path / "attempt1.pid"
    repository_id, _, commit = repository(admin, tmp_path, slow_first_attempt(pid_file, retries=retries))
    run_id = admin.push(repository_id, commit).json()["run_id"]
    pid = pid_in(pid_file)
    holder = admin.run(run_id)["jobs"][0]["runner_id"]
    killed_at = time.monotonic()
    cluster.kill(cluster.runner_service(holder))
    wait_for(lambda: not pid_alive(pid), 5, "the killed runner's job process to die with it")

    run = admin.wait_run(run_id, timeout=30)
    ended_after = time.monotonic() - killed_at
    job = run["jobs"][0]
    if retries:
        assert (run["status"], job["status"], job["attempt"]) == ("succeeded", "succeeded", 2)
        assert "attempt 2 done" in admin.log(job["id"])
    else:
        assert (run["status"], job["status"], job["error"]) == ("failed", "failed", "runner lost")
        # Within lease + one reaper period (+ the projection and the polling here).
        assert ended_after < LEASE_SECONDS + 0.2 + 2.0
    assert_invariants(cluster)


def test_a_runner_restarted_after_a_kill_kills_what_its_job_left_running_and_its_workspace(
        tmp_path: Path, cluster: LedgerCluster, admin: Api):
    """The job's shell dies with its runner, but what it started in the background lives on,
    racing the retry elsewhere. The runner's next life kills it before taking a job."""
    pid_file, orphan_file = tmp_path / "attempt1.pid", tmp_path / "orphan.pid"
    workflow = ("jobs:\n  - name: slow\n    retries: 1\n    run: |\n"
                "      if [ \"$LEDGERCI_ATTEMPT\" = 1 ]; then\n"
                f"        (exec sleep 300) & echo $! > {orphan_file}; echo $$ > {pid_file}; wait\n"
                "      fi\n")
    repository_id, _, commit = repository(admin, tmp_path, workflow)
    run_id = admin.push(repository_id, commit).json()["run_id"]
    shell, orphan = pid_in(pid_file), pid_in(orphan_file)
    holder = admin.run(run_id)["jobs"][0]["runner_id"]
    name = cluster.runner_service(holder)
    workspaces = cluster.base_dir / name / "workspaces"
    first_workspace = f"{admin.run(run_id)['jobs'][0]['id']}-1"
    assert [p.name for p in workspaces.iterdir()] == [first_workspace]
    cluster.kill(name)
    wait_for(lambda: not pid_alive(shell), 5, "the job's shell to die with its runner")
    assert pid_alive(orphan), "the background process died with the runner: this test proves nothing"

    cluster.start(name)
    wait_for(lambda: not pid_alive(orphan), 30, "the restarted runner to kill what its job left running")
    # It removes the workspace right after the kill: wait for that too, not assume it is done.
    wait_for(lambda: not (workspaces / first_workspace).exists(), 10, "the left-over workspace to be removed")
    log = cluster.log_path(name).read_text()
    assert f"killing process {orphan} (sleep 300)" in log and f"removing workspace {first_workspace}" in log
    assert admin.wait_run(run_id, timeout=30)["status"] == "succeeded", admin.explain(run_id)
    assert_invariants(cluster)


def test_timeout_kills_the_process_and_fails_the_job(tmp_path: Path, cluster: LedgerCluster, admin: Api):
    pid_file = tmp_path / "job.pid"
    workflow = f"jobs:\n  - name: forever\n    timeout: 2s\n    run: echo $$ > {pid_file}; exec sleep 60\n"
    repository_id, _, commit = repository(admin, tmp_path, workflow)
    run_id = admin.push(repository_id, commit).json()["run_id"]
    pid = pid_in(pid_file)
    run = admin.wait_run(run_id, timeout=20)
    assert (run["status"], run["jobs"][0]["status"], run["jobs"][0]["error"]) == ("failed", "failed", "timed out")
    assert not pid_alive(pid)
    assert "timed out" in admin.log(run["jobs"][0]["id"])
    assert_invariants(cluster)


def test_cancel_stops_the_running_job_within_seconds(tmp_path: Path, cluster: LedgerCluster, admin: Api):
    pid_file = tmp_path / "job.pid"
    workflow = (f"jobs:\n  - name: long\n    run: echo $$ > {pid_file}; exec sleep 60\n"
                "  - name: later\n    run: echo later\n  - name: always\n    when: always\n    run: echo x\n")
    repository_id, _, commit = repository(admin, tmp_path, workflow)
    run_id = admin.push(repository_id, commit).json()["run_id"]
    pid = pid_in(pid_file)
    cancelled_at = time.monotonic()
    response = admin.http.post(f"/api/v1/runs/{run_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    wait_for(lambda: not pid_alive(pid), 2.0, "the cancelled job's process to be killed")
    assert time.monotonic() - cancelled_at < 2.0
    run = admin.wait_run(run_id)
    assert run["status"] == "cancelled"
    assert [j["status"] for j in run["jobs"]] == ["cancelled"] * 3
    _, other_token = admin.tenant()
    assert Api(admin.url, other_token).http.post(f"/api/v1/runs/{run_id}/cancel").status_code == 404
    assert_invariants(cluster)


def test_rerun_is_a_new_run_of_the_same_commit(tmp_path: Path, cluster: LedgerCluster, admin: Api):
    repository_id, _, commit = repository(admin, tmp_path, "jobs:\n  - name: a\n    run: echo $LEDGERCI_RUN_ID\n")
    first = admin.push(repository_id, commit).json()["run_id"]
    admin.wait_run(first)
    reruns = [admin.http.post(f"/api/v1/runs/{first}/rerun").json() for _ in range(2)]
    assert [r["rerun"] for r in reruns] == [1, 2]
    assert len({first, *(r["run_id"] for r in reruns)}) == 3
    for rerun in reruns:
        run = admin.wait_run(rerun["run_id"])
        assert run["status"] == "succeeded" and run["commit"] == commit
    assert admin.push(repository_id, commit).json() == {"run_id": first, "duplicate": True}
    assert_invariants(cluster)


def test_duplicate_pushes_to_two_gateways_while_one_is_killed_make_one_run(
    tmp_path: Path, cluster: LedgerCluster, admin: Api
):
    repository_id, _, commit = repository(admin, tmp_path, "jobs:\n  - name: a\n    run: 'true'\n")
    cluster.start("gateway#2")
    urls = [cluster.gateway_url("gateway"), cluster.gateway_url("gateway#2")]
    body = {"repository_id": repository_id, "commit": commit}
    barrier = threading.Barrier(20)

    def push(index: int) -> tuple[int, str | None]:
        barrier.wait()
        if index == 10:
            cluster.kill("gateway#2")
        try:
            response = httpx.post(f"{urls[index % 2]}/api/v1/push", json=body, timeout=10,
                                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        except httpx.HTTPError:
            return 0, None  # the killed gateway: no answer
        return response.status_code, response.json().get("run_id")

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(push, range(20)))
    accepted = [a for a in answers if a[0] in (200, 202)]
    assert accepted and all(status in (0, 200, 202, 503) for status, _ in answers), answers
    assert len({run_id for _, run_id in accepted}) == 1
    assert sum(1 for status, _ in accepted if status == 202) <= 1
    run = admin.wait_run(accepted[0][1])
    assert run["status"] == "succeeded"
    assert len(admin.http.get("/api/v1/runs", params={"repository_id": repository_id}).json()["runs"]) == 1
    assert_invariants(cluster)


def test_postgres_crash_during_pushes_answers_503_and_keeps_every_accepted_push(
    tmp_path: Path, fresh_postgres_server, fresh_nats_server
):
    database_url = fresh_postgres_server.url
    cluster = start_cluster(tmp_path / "cluster", database_url, fresh_nats_server.url, runners=1)
    try:
        admin = Api(cluster.url, ADMIN_TOKEN)
        # PostgreSQL stays down for longer than a lease (four pushes wait out the gateway's 5 s
        # deadline), so a job that ended just before the crash may not get its outcome in before
        # the reaper finds its lease passed: that attempt is then abandoned ("runner lost") and,
        # with a retry, run again; exactly one attempt's outcome is recorded either way.
        workflow = "jobs:\n  - name: a\n    retries: 2\n    run: 'true'\n"
        repository_id, commits = many_commits(admin, tmp_path, 24, workflow)
        statuses: list[tuple[int, str | None]] = []
        for index, commit in enumerate(commits):
            if index == 10:
                fresh_postgres_server.kill()  # a crash, as `pg_ctl stop -m immediate` or worse
            if index == 14:
                fresh_postgres_server.start()
            response = admin.push(repository_id, commit)
            statuses.append((response.status_code, response.json().get("run_id")))
        codes = [code for code, _ in statuses]
        assert 500 not in codes and set(codes) <= {200, 202, 503}, codes
        assert 503 in codes
        for commit, (code, run_id) in zip(commits, statuses, strict=True):
            if code == 503:
                # As a client does: push again. A push answered 503 may still have landed (its
                # command committed once the store was back): then 200 and the same run, which
                # must run to its end like any other, never a second run.
                again = admin.push(repository_id, commit)
                assert again.status_code in (200, 202), again.text
                run_id = again.json()["run_id"]
            assert admin.wait_run(run_id, timeout=60)["status"] == "succeeded"
        assert_invariants(cluster)
    finally:
        cluster.stop_all()


def test_nats_crash_loses_nothing(tmp_path: Path, cluster: LedgerCluster, admin: Api, fresh_nats_server):
    repository_id, commits = many_commits(admin, tmp_path, 10)
    run_ids = [admin.push(repository_id, c).json()["run_id"] for c in commits[:5]]
    fresh_nats_server.kill()
    run_ids += [admin.push(repository_id, c).json()["run_id"] for c in commits[5:]]  # the store takes them
    time.sleep(0.5)
    fresh_nats_server.start()
    for run_id in run_ids:
        assert admin.wait_run(run_id, timeout=60)["status"] == "succeeded"
    assert_invariants(cluster)


def test_soak_random_kills_of_every_service(tmp_path: Path, cluster: LedgerCluster, admin: Api):
    workflow = "jobs:\n  - name: a\n    retries: 3\n    run: sleep 0.05\n  - name: b\n    retries: 3\n    run: 'true'\n"
    # At least 100 runs, and more while some service has not been killed yet: every kill must
    # land while runs are in flight, however fast they go (100 once ended before the last kill).
    repository_id, commits = many_commits(admin, tmp_path, 400, workflow)
    victims = ["relay", "projector", "scheduler", "reaper", "runner", "runner#2", "gateway"]
    rng = random.Random(int(os.environ.get("LEDGERCI_SOAK_SEED", "7")))
    stop = threading.Event()
    kills: list[str] = []

    def driver() -> None:
        # Every service in turn, in a new random order each round, at random instants.
        while not stop.is_set():
            for victim in rng.sample(victims, len(victims)):
                if stop.wait(rng.uniform(0.5, 2.0)):
                    return
                cluster.kill(victim)
                kills.append(victim)
                cluster.start(victim)

    def call(method: str, path: str, **kwargs) -> httpx.Response | None:
        try:
            return admin.http.request(method, path, **kwargs)
        except httpx.HTTPError:
            return None  # the gateway is being restarted

    killer = threading.Thread(target=driver)
    killer.start()
    try:
        run_ids = []
        for commit in commits:
            if len(run_ids) >= 100 and set(kills) == set(victims):
                break
            body = {"repository_id": repository_id, "commit": commit}
            response = wait_for(lambda b=body: (r := call("POST", "/api/v1/push", json=b)) is not None
                                and r.status_code in (200, 202) and r, 30, "a push to be answered")
            run_ids.append(response.json()["run_id"])
        deadline = time.monotonic() + 240
        pending = set(run_ids)
        while pending and time.monotonic() < deadline:
            for run_id in list(pending):
                response = call("GET", f"/api/v1/runs/{run_id}")
                if response is not None and response.status_code == 200 and response.json()["status"] in FINAL:
                    pending.discard(run_id)
            time.sleep(0.2)
    finally:
        stop.set()
        killer.join()
    stuck = {run_id: [(e["type"], e["actor"], e["data"].get("attempt")) for e in admin.events(run_id)]
             for run_id in pending}
    assert not pending, f"{len(pending)} runs never ended (kills: {kills}): {stuck}"
    assert len(set(run_ids)) == len(run_ids) >= 100
    assert set(kills) == set(victims), f"not every service was killed while {len(run_ids)} runs went through"
    print(f"soak: {len(run_ids)} runs, {len(kills)} kills ({', '.join(kills)})")
    assert_invariants(cluster)


def test_jetstream_node_killed_during_dispatches_commits_every_job_once(
    tmp_path: Path, postgres_url: str, nats_cluster
):
    """Three nats-server nodes, streams with 3 replicas; the JOBS stream's leader is killed."""
    cluster = LedgerCluster(tmp_path / "cluster", postgres_url, nats_cluster.url,
                            extra_env={**FAULT_ENV, "LEDGERCI_STREAM_REPLICAS": "3"})
    (tmp_path / "cluster").mkdir()
    try:
        for name in ("relay", "projector", "scheduler", "reaper", "gateway", "runner", "runner#2"):
            cluster.start(name)
        admin = Api(cluster.url, ADMIN_TOKEN)
        repository_id, commits = many_commits(admin, tmp_path, 30)
        run_ids = [admin.push(repository_id, c).json()["run_id"] for c in commits[:10]]
        leader = asyncio.run(stream_leader(nats_cluster.url, JOBS_STREAM))
        nats_cluster.kill(nats_cluster.node_index(leader))
        run_ids += [admin.push(repository_id, c).json()["run_id"] for c in commits[10:]]
        for run_id in run_ids:
            run = admin.wait_run(run_id, timeout=90)
            assert run["status"] == "succeeded", admin.explain(run_id)
        history = [e for run_id in run_ids for e in admin.events(run_id)]
        assert sum(e["type"] == "JobSucceeded" for e in history) == 60
        assert_invariants(cluster)
    finally:
        cluster.stop_all()


async def stream_leader(nats_url: str, stream: str) -> str:
    nc = await nats.connect(servers=nats_url.split(","))
    try:
        info = await nc.jetstream().stream_info(stream)
        return info.cluster.leader
    finally:
        await nc.close()


def test_dispatch_that_reaches_max_deliver_goes_to_the_dead_letter_stream(tmp_path: Path, postgres_url: str,
                                                                          fresh_nats_server):
    cluster = LedgerCluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url,
                            extra_env={**FAULT_ENV, "LEDGERCI_MAX_DELIVER": "3"})
    (tmp_path / "cluster").mkdir()
    try:
        for name in ("scheduler", "reaper", "runner"):
            cluster.start(name)
        time.sleep(3)  # let them create the streams and consumers
        cluster.kill("scheduler")  # nobody answers runner commands: every delivery is nak'ed
        dispatch = JobDispatch(
            run_id=str(uuid.uuid4()), job_id=str(uuid.uuid4()), attempt=1, job_name="x", tenant_id="t",
            repository_id="r", clone_url="file:///nowhere", commit="a" * 40, ref=None, script="true",
            env={}, image=None, timeout_seconds=60, idempotency_key="k",
        )
        moved = asyncio.run(publish_and_watch_dead_letters(fresh_nats_server.url, dispatch))
        assert moved == (0, 1)
    finally:
        cluster.stop_all()


async def publish_and_watch_dead_letters(nats_url: str, dispatch: JobDispatch) -> tuple[int, int]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.publish(jobs_subject("default"), msgspec.json.encode(dispatch),
                         headers={"Nats-Msg-Id": f"{dispatch.job_id}:1"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            jobs, dead = await js.stream_info(JOBS_STREAM), await js.stream_info(DEAD_STREAM)
            if dead.state.messages:
                return jobs.state.messages, dead.state.messages
            await asyncio.sleep(0.2)
        return jobs.state.messages, dead.state.messages
    finally:
        await nc.close()


def test_nats_losing_all_its_data_is_reconciled_from_the_event_store(
    tmp_path: Path, cluster: LedgerCluster, admin: Api, fresh_nats_server
):
    """Worse than a crash: the nats-server comes back with an empty store (a lost disk)."""
    repository_id, commits = many_commits(admin, tmp_path, 6)
    run_ids = [admin.push(repository_id, c).json()["run_id"] for c in commits[:3]]
    for run_id in run_ids:
        admin.wait_run(run_id)
    cluster.kill("runner")
    cluster.kill("runner#2")
    run_ids += [admin.push(repository_id, c).json()["run_id"] for c in commits[3:]]  # queued, not run
    admin.wait_run(run_ids[-1], until=lambda r: r["jobs"] and r["jobs"][0]["status"] == "queued")

    fresh_nats_server.kill()
    shutil.rmtree(fresh_nats_server.store_dir / "jetstream")
    fresh_nats_server.start()
    cluster.start("runner")

    for run_id in run_ids:
        assert admin.wait_run(run_id, timeout=60)["status"] == "succeeded"
    # Jobs are admitted from the event store, so the runs can end while the relay is still
    # re-publishing the history to the emptied EVENTS stream: it must get there, with no gap.
    stored = store_positions(cluster.env["LEDGERCI_DATABASE_URL"])
    wait_for(lambda: asyncio.run(stream_positions(fresh_nats_server.url)) == stored, 15,
             "the EVENTS stream to hold every stored event once, in order")
    assert_invariants(cluster)
