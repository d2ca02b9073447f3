"""Network partitions (issue 18): a service cut off from the network while it works, then
healed. Every service is a separate process on PostgreSQL and a real nats-server; the cut is
real (iptables drops what the partitioned process sends, tests/support/partition.py). Every
test ends with the invariant checker over the full event history."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import nats
import pytest

from domain.messages import EVENTS_STREAM, JOBS_STREAM
from tests.e2e.test_faults import (
    FAULT_ENV,
    LEASE_SECONDS,
    assert_invariants,
    many_commits,
    pid_in,
    repository,
    slow_first_attempt,
    stream_leader,
)
from tests.e2e.test_faults import wait_for as wait_until
from tests.e2e.test_walking_skeleton import store_positions, stream_positions
from tests.support.api import Api
from tests.support.cluster import ADMIN_TOKEN, LedgerCluster
from tests.support.fairness import count_jobs, history, one_job, tenant_with_backlog
from tests.support.fairness import wait_until as wait_for_progress
from tests.support.invariants import check_invariants, running_over_time
from tests.support.partition import Partition
from tests.support.processes import pid_alive

pytestmark = pytest.mark.e2e


@pytest.fixture
def partition() -> Iterator[Partition]:
    with Partition.around() as made:
        yield made


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, fresh_nats_server) -> Iterator[LedgerCluster]:
    """Every service but the runners, which each test starts where it wants them."""
    cluster = LedgerCluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url, extra_env=FAULT_ENV)
    with cluster.running(("relay", "projector", "scheduler", "reaper", "gateway")):
        yield cluster


def push_slow_job(admin: Api, tmp_path: Path) -> tuple[str, int]:
    """A run whose first attempt sleeps (retried once): its id and the attempt's process."""
    pid_file = tmp_path / "attempt1.pid"
    repository_id, _, commit = repository(admin, tmp_path, slow_first_attempt(pid_file, retries=1))
    run_id = admin.push(repository_id, commit).json()["run_id"]
    return run_id, pid_in(pid_file)


def the_job_moves_to_another_runner(cluster: LedgerCluster, admin: Api, run_id: str, pid: int) -> None:
    """The runner that lost touch stops the job itself (nothing may run on for an attempt the
    system gives to someone else); a second runner then runs it as attempt 2."""
    wait_until(lambda: not pid_alive(pid), 4 * LEASE_SECONDS + 5, "the runner that lost touch to kill its job")
    cluster.start("runner#2")
    run = admin.wait_run(run_id, timeout=60)
    assert run["status"] == "succeeded", admin.explain(run_id)
    assert (run["jobs"][0]["attempt"], run["jobs"][0]["runner_id"]) == (2, cluster.runner_id("runner#2"))


def assert_the_first_runner_said_nothing_once_healed(cluster: LedgerCluster, admin: Api, run_id: str) -> None:
    time.sleep(3 * LEASE_SECONDS)  # the healed runner's queued words, if it (wrongly) had any, arrive by now
    history = admin.events(run_id)
    abandoned = [e for e in history if e["type"] == "JobAttemptAbandoned"]
    assert [(e["data"]["attempt"], e["data"]["kind"], e["actor"]) for e in abandoned] == [(1, "runner_lost", "reaper")]
    after = history[history.index(abandoned[0]):]
    late = [(e["type"], e["actor"]) for e in after if e["actor"] == f"runner:{cluster.runner_id()}"]
    assert late == [], f"the runner changed the run after its attempt was given up: {late}"
    assert [e["type"] for e in history].count("JobSucceeded") == 1
    assert_invariants(cluster)


def test_a_runner_cut_off_mid_job_kills_it_and_reports_nothing_once_healed(
        tmp_path: Path, cluster: LedgerCluster, partition: Partition) -> None:
    admin = Api(cluster.url, ADMIN_TOKEN)
    cluster.start("runner", wrap=partition.wrap)  # the only runner: the first attempt is its
    run_id, pid = push_slow_job(admin, tmp_path)
    assert admin.run(run_id)["jobs"][0]["runner_id"] == cluster.runner_id()

    partition.cut()
    the_job_moves_to_another_runner(cluster, admin, run_id, pid)
    partition.heal()
    assert_the_first_runner_said_nothing_once_healed(cluster, admin, run_id)


def test_a_runner_heard_by_nats_but_hearing_no_reply_stops_its_job_and_the_job_runs_once(
        tmp_path: Path, cluster: LedgerCluster, fresh_nats_server) -> None:
    """One direction dropped: what the runner sends still leaves it, but no reply reaches it.
    Not knowing whether it still holds the attempt, it must stop at the lease it last heard of;
    the attempt is then given up and runs elsewhere, once.

    Whether its heartbeats still land is up to TCP, not us: with no ACK coming back, after the
    first retransmission timeout only the oldest unacknowledged segment is sent again, so
    messages written later may never leave (they did on a quiet machine, not in CI). So the test
    asserts only what the runner must do, not that it was heard."""
    admin = Api(cluster.url, ADMIN_TOKEN)
    cluster.start("runner")
    run_id, pid = push_slow_job(admin, tmp_path)

    with Partition.toward(cluster.processes["runner"].pid, fresh_nats_server.port) as one_way:
        one_way.cut()
        the_job_moves_to_another_runner(cluster, admin, run_id, pid)
    assert_the_first_runner_said_nothing_once_healed(cluster, admin, run_id)


def test_a_gateway_cut_off_from_nats_says_it_is_not_ready_yet_takes_pushes_and_cancels(
        tmp_path: Path, postgres_url: str, fresh_nats_server) -> None:
    """The gateway loses NATS (not HTTP, not the store): its readiness says so at once, pushes
    still land in the store and run (the relay publishes them, not the gateway), and a cancel
    still stops the running job, though the gateway cannot tell the runner: the runner's next
    heartbeat is refused. Healed, it is ready again."""
    cluster = LedgerCluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url, extra_env=FAULT_ENV)
    with Partition.around(port=fresh_nats_server.port) as cut_from_nats, \
            cluster.running(("relay", "projector", "scheduler", "reaper")):
        cluster.start("runner", env={"LEDGERCI_RUNNER_SLOTS": "2"})  # the quick run beside the slow one
        cluster.start("gateway", wrap=cut_from_nats.wrap)
        admin = Api(cluster.url, ADMIN_TOKEN)
        pid_file = tmp_path / "attempt1.pid"
        repository_id, repo, slow = repository(admin, tmp_path, slow_first_attempt(pid_file, retries=0))
        running = admin.push(repository_id, slow).json()["run_id"]
        pid = pid_in(pid_file)
        assert admin.http.get("/readyz").status_code == 200

        cut_from_nats.cut()
        not_ready = admin.http.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["checks"]["nats"].startswith("unreachable")
        assert not_ready.json()["checks"]["store"] == "ok"
        quick = repo.commit({".ledgerci.yml": "jobs:\n  - name: quick\n    run: 'true'\n", "n": "2"})
        pushed = admin.push(repository_id, quick)
        assert pushed.status_code == 202, pushed.text
        assert admin.wait_run(pushed.json()["run_id"], timeout=60)["status"] == "succeeded"
        cancelled = admin.http.post(f"/api/v1/runs/{running}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["cancelled"] is True, admin.explain(running)
        wait_until(lambda: not pid_alive(pid), 4 * LEASE_SECONDS + 5, "the cancelled job's process to be killed")

        cut_from_nats.heal()
        wait_until(lambda: admin.http.get("/readyz").status_code == 200, 60, "the healed gateway to be ready")
        assert admin.run(running)["status"] == "cancelled"
        assert_invariants(cluster)


def test_an_admission_leader_cut_off_from_postgresql_stops_releasing_and_the_quota_holds(
        tmp_path: Path, postgres_url: str, fresh_nats_server) -> None:
    """Two schedulers; the admission leader loses PostgreSQL but keeps NATS. It cannot confirm
    its lock, so it releases nothing more; PostgreSQL ends its silent lock session
    (idle_session_timeout) and the other scheduler takes over. No quota is exceeded at any
    point of the history, every run succeeds, and once healed the old leader stays a standby."""
    # PostgreSQL ends the silent leader's session after 12 s instead of 30: the same takeover, sooner.
    cluster = LedgerCluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url,
                            extra_env={"LEDGERCI_LEADER_SESSION_SECONDS": "12"})
    pg_port = urlsplit(postgres_url).port
    assert pg_port
    with Partition.around(port=pg_port) as first, Partition.around(port=pg_port) as second, \
            cluster.running(("relay", "projector", "reaper", "gateway")):
        partitions = {"scheduler": first, "scheduler#2": second}
        for name, partition in partitions.items():
            cluster.start(name, wrap=partition.wrap)
        cluster.start("runner#pool", env={"LEDGERCI_RUNNER_SLOTS": "6"})
        admin = Api(cluster.url, ADMIN_TOKEN)
        run_ids = tenant_with_backlog(admin, tmp_path, "capped", 16, one_job(0.5), max_concurrent_jobs=2)
        database_url = cluster.env["LEDGERCI_DATABASE_URL"]
        wait_for_progress(lambda: count_jobs(database_url, "succeeded") >= 4, 120, "a quarter of the jobs done")
        leader = next(name for name in partitions if "took over" in cluster.log_path(name).read_text())
        other = "scheduler#2" if leader == "scheduler" else "scheduler"

        partitions[leader].cut()
        wait_until(lambda: "took over" in cluster.log_path(other).read_text(), 90,
                   "the other scheduler to take over once the cut-off leader's lock session ended")
        for run_id in run_ids:
            assert admin.wait_run(run_id, timeout=180)["status"] == "succeeded", admin.explain(run_id)
        partitions[leader].heal()
        time.sleep(5)  # the healed old leader's stalled work completes now, if it (wrongly) would act on it

        events = history(database_url)
        running = [count for _, tenant, count, _ in running_over_time(events) if tenant == "capped"]
        assert max(running) == 2, "the quota was never reached: the test proves nothing"
        assert check_invariants(database_url) == []  # includes the quota, start by start
        assert cluster.log_path(leader).read_text().count("took over") == 1  # it did not lead again


SHORT_JOBS = ("jobs:\n  - name: a\n    run: 'sleep 0.2'\n    retries: 2\n"
              "  - name: b\n    run: 'sleep 0.2'\n    retries: 2\n")


def test_a_nats_node_cut_off_from_the_other_two_loses_no_event_or_dispatch_and_runs_no_job_twice(
        tmp_path: Path, postgres_url: str, nats_cluster) -> None:
    """Three nats-servers, every stream with 3 replicas. n0 leads the EVENTS and JOBS streams
    and is cut off from n1 and n2, while clients on both sides still reach their node: a
    runner and a gateway that know only n0, every other service only n1 and n2. The majority
    elects new stream leaders and goes on: pushes through either gateway run, each job once.
    Healed, n0 catches up, the minority's clients carry on, and the EVENTS stream holds every
    stored event once, in order."""
    n0, *majority = nats_cluster.nodes
    with Partition.from_peers(n0.cluster_port, [node.cluster_port for node in majority]) as cut_off:
        nats_cluster.stop(0)
        n0.wrap = cut_off.wrap
        nats_cluster.start_node(0)
        nats_cluster.wait_healthy(30)
        majority_url = ",".join(node.url for node in majority)
        cluster = LedgerCluster(tmp_path / "cluster", postgres_url, majority_url,
                                extra_env={**FAULT_ENV, "LEDGERCI_STREAM_REPLICAS": "3"})
        with cluster.running(("relay", "projector", "scheduler", "reaper", "gateway")):
            cluster.start("runner")
            cluster.start("runner#2", env={"LEDGERCI_NATS_URL": n0.url})
            cluster.start("gateway#2", env={"LEDGERCI_NATS_URL": n0.url})
            admin = Api(cluster.url, ADMIN_TOKEN)
            minority_gateway = Api(cluster.gateway_url("gateway#2"), ADMIN_TOKEN)
            repository_id, commits = many_commits(admin, tmp_path, 24, SHORT_JOBS)
            for stream in (EVENTS_STREAM, JOBS_STREAM):
                asyncio.run(lead_from(nats_cluster.url, stream, n0.server_name))
            run_ids = [admin.push(repository_id, c).json()["run_id"] for c in commits[:8]]
            # A run pushed a moment ago may not be in the read model yet (404): not ended, then.
            wait_until(lambda: any(admin.http.get(f"/api/v1/runs/{r}").json().get("status") == "succeeded"
                                   for r in run_ids), 60, "a first run to end")

            cut_off.cut()
            for i, commit in enumerate(commits[8:16]):
                pushed = (minority_gateway if i % 2 else admin).push(repository_id, commit)
                assert pushed.status_code == 202, pushed.text
                run_ids.append(pushed.json()["run_id"])
            for run_id in run_ids:
                assert admin.wait_run(run_id, timeout=120)["status"] == "succeeded", admin.explain(run_id)
            for stream in (EVENTS_STREAM, JOBS_STREAM):
                leader = asyncio.run(stream_leader(majority_url, stream))
                assert leader != n0.server_name, f"{stream} is still led by the cut-off node"

            cut_off.heal()
            nats_cluster.wait_healthy(60)
            run_ids += [minority_gateway.push(repository_id, c).json()["run_id"] for c in commits[16:]]
            for run_id in run_ids:
                assert admin.wait_run(run_id, timeout=120)["status"] == "succeeded", admin.explain(run_id)
            assert cluster.processes["runner#2"].poll() is None, "the runner on the cut-off side exited"
            stored = store_positions(cluster.env["LEDGERCI_DATABASE_URL"])
            wait_until(lambda: asyncio.run(stream_positions(nats_cluster.url)) == stored, 30,
                       "the EVENTS stream to hold every stored event once, in order")
            wait_until(lambda: (n0.stream_state(EVENTS_STREAM) or {}).get("last_seq") == len(stored), 30,
                       "the healed node's copy of EVENTS to catch up")
            events = [e for run_id in run_ids for e in admin.events(run_id)]
            assert sum(e["type"] == "JobSucceeded" for e in events) == 2 * len(commits)
            starters = {e["data"]["runner_id"] for e in events if e["type"] == "JobStarted"}
            both_sides = {cluster.runner_id(), cluster.runner_id("runner#2")}
            assert starters == both_sides, f"a side's runner ran nothing: {starters}"
            assert_invariants(cluster)


async def lead_from(nats_url: str, stream: str, server_name: str) -> None:
    """Step the stream's leader down until `server_name` leads it (asking for it as the
    preferred node, which servers that know the placement option honour at once)."""
    nc = await nats.connect(servers=nats_url.split(","))
    try:
        js = nc.jetstream()
        for _ in range(20):
            try:
                info = await js.stream_info(stream)
            except nats.js.errors.NotFoundError:  # not made yet by the services starting
                await asyncio.sleep(1)
                continue
            if info.cluster and info.cluster.leader == server_name:
                return
            request = json.dumps({"placement": {"preferred": server_name}}).encode()
            with contextlib.suppress(nats.errors.TimeoutError):
                await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=5)
            await asyncio.sleep(1)  # a new leader is elected
        raise AssertionError(f"{server_name} never came to lead {stream}")
    finally:
        await nc.close()


def test_the_same_push_through_a_gateway_cut_off_from_postgresql_and_through_another_makes_one_run(
        tmp_path: Path, postgres_url: str, fresh_nats_server) -> None:
    """The git service retries a push through the other gateway while the first one hangs on a
    store it cannot reach. The cut-off gateway answers 503 at its deadline (never 500), the
    other accepts, and once healed the first one's stalled write and a retry through it land
    on the same run: one run, planned once."""
    pg_port = urlsplit(postgres_url).port
    assert pg_port
    cluster = LedgerCluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url, extra_env=FAULT_ENV)
    with Partition.around(port=pg_port) as cut_from_store, \
            cluster.running(("relay", "projector", "scheduler", "reaper", "gateway", "runner")):
        cluster.start("gateway#2", wrap=cut_from_store.wrap)
        admin = Api(cluster.url, ADMIN_TOKEN)
        cut_off = Api(cluster.gateway_url("gateway#2"), ADMIN_TOKEN)
        repository_id, _, commit = repository(admin, tmp_path, "jobs:\n  - name: a\n    run: 'true'\n")

        cut_from_store.cut()
        with ThreadPoolExecutor(1) as pool:
            stalled = pool.submit(cut_off.push, repository_id, commit)
            accepted = admin.push(repository_id, commit)
            assert accepted.status_code == 202, accepted.text
            assert stalled.result().status_code == 503, stalled.result().text
        run_id = accepted.json()["run_id"]
        cut_from_store.heal()

        retried = wait_until(lambda: (answer := cut_off.push(repository_id, commit)).status_code < 500 and answer,
                             60, "the healed gateway to answer the retried push")
        assert retried.status_code in (200, 202) and retried.json()["run_id"] == run_id, retried.text
        assert admin.wait_run(run_id)["status"] == "succeeded", admin.explain(run_id)
        runs = admin.http.get("/api/v1/runs", params={"repository_id": repository_id}).json()["runs"]
        assert [run["id"] for run in runs] == [run_id]
        assert [e["type"] for e in admin.events(run_id)].count("RunPlanned") == 1
        assert_invariants(cluster)
