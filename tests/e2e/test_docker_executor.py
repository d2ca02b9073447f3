"""The Docker executor against the real engine: containers, isolation, limits, clean-up.

Some tests drive `runner.docker` directly, where a full cluster would add nothing; the others
run every service as a process (PostgreSQL, nats-server) with `LEDGERCI_EXECUTOR=docker`.
The job images are made on this machine (tests.support.docker_images): no registry is used,
and the pull policy is `never`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.errors import NotFound

from domain.workflow import Resources
from runner.docker import OUT_OF_MEMORY, RUNNER_LABEL, DockerExecutor, DockerSettings
from runner.executor import Execution, Outcome
from tests.support.api import Api
from tests.support.cluster import ADMIN_TOKEN, LedgerCluster
from tests.support.docker_images import BUSYBOX_IMAGE, OTHER_IMAGE, ensure_test_images
from tests.support.git_repo import GitRepo
from tests.support.invariants import check_invariants

pytestmark = pytest.mark.e2e

SETTINGS = DockerSettings(pull="never", pids_limit=128, max_cpus=1.0, max_memory="256m")


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    ensure_test_images()
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture
def runner_id(engine: docker.DockerClient) -> Iterator[str]:
    """A runner id of the test's own; whatever containers carry it are removed afterwards."""
    runner_id = f"test-runner-{secrets.token_hex(4)}"
    yield runner_id
    for container in _containers(engine, RUNNER_LABEL, runner_id):
        with contextlib.suppress(NotFound):
            engine.api.remove_container(container["Id"], force=True)


def _containers(engine: docker.DockerClient, label: str, value: str) -> list[dict[str, Any]]:
    """The low-level listing: the high-level one inspects each container again, and fails on
    one that the runner removed in between."""
    return engine.api.containers(all=True, filters={"label": f"{label}={value}"})


class Collected:
    def __init__(self) -> None:
        self.data = bytearray()

    async def __call__(self, chunk: bytes) -> None:
        self.data += chunk

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


def execution(tmp_path: Path, script: str, *, image: str = BUSYBOX_IMAGE, timeout: float = 60.0,
              resources: Resources | None = None, job: str | None = None) -> Execution:
    job = job or secrets.token_hex(8)
    workdir = tmp_path / f"workspace-{job}"
    workdir.mkdir(parents=True)
    (workdir / "hello.txt").write_text("the commit's file\n")
    return Execution(
        script=script, env={"HOME": str(workdir), "LEDGERCI_JOB_ID": job, "FROM_FILE": "workflow-env"},
        workdir=workdir, image=image, timeout_seconds=timeout, resources=resources,
        labels={"run": "run-1", "job": job, "attempt": "1", "tenant": "acme"},
    )


async def test_a_job_runs_in_the_image_it_names_on_its_workspace_and_keeps_its_exit_code(
        tmp_path: Path, engine: docker.DockerClient, runner_id: str):
    executor = DockerExecutor(SETTINGS, runner_id=runner_id, client=engine)
    script = """
        echo "image=$(cat /etc/ledgerci-image) uid=$(id -u) pwd=$(pwd)"
        echo "file=$(cat hello.txt) env=$FROM_FILE job=$LEDGERCI_JOB_ID"
        echo built > output.txt && mkdir -p cache && touch /tmp/scratch
        touch /etc/anything 2>/dev/null && echo "rootfs writable"
        exit 3
    """
    for image in (BUSYBOX_IMAGE, OTHER_IMAGE):
        job = execution(tmp_path, script, image=image)
        output = Collected()
        outcome = await executor.run(job, output)
        assert outcome == Outcome(exit_code=3), output.text  # a plain failure: no error of ours
        assert f"image={image} uid=65534 pwd={job.workdir}" in output.text
        assert f"file=the commit's file env=workflow-env job={job.labels['job']}" in output.text
        assert "rootfs writable" not in output.text
        assert (job.workdir / "output.txt").read_text() == "built\n"  # the workspace is the checkout
        assert _containers(engine, "ledgerci.job", job.labels["job"]) == []  # removed after the job


async def test_a_running_job_container_shows_every_hardening_setting(
        tmp_path: Path, engine: docker.DockerClient, runner_id: str):
    executor = DockerExecutor(SETTINGS, runner_id=runner_id, client=engine)
    job = execution(tmp_path, "echo started; sleep 60", resources=Resources(cpus=0.5, memory="64m"))
    output = Collected()
    running = asyncio.create_task(executor.run(job, output))
    container = await _wait_for_container(engine, job, output)

    host = container.attrs["HostConfig"]
    assert host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert container.attrs["Config"]["User"] == "65534:65534"
    assert host["PidsLimit"] == SETTINGS.pids_limit
    assert host["Memory"] == host["MemorySwap"] == 64 * 1024**2  # no swap beyond the memory
    assert host["NanoCpus"] == 500_000_000
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True and "/tmp" in host["Tmpfs"]
    assert host["Init"] is True and host["IpcMode"] == "private"
    mounts = [(m["Source"], m["Destination"]) for m in container.attrs["Mounts"]]
    assert mounts == [(str(job.workdir), str(job.workdir))]  # the checkout, and nothing else
    assert not any("docker.sock" in str(m) for m in container.attrs["Mounts"] + (host["Binds"] or []))
    assert container.labels == {"ledgerci.run": "run-1", "ledgerci.job": job.labels["job"],
                                "ledgerci.attempt": "1", "ledgerci.tenant": "acme", RUNNER_LABEL: runner_id}

    running.cancel()  # what the agent does on a cancel or a lost lease
    with pytest.raises(asyncio.CancelledError):
        await running
    assert _containers(engine, "ledgerci.job", job.labels["job"]) == []


async def test_a_memory_hog_fails_out_of_memory_and_a_fork_bomb_hits_the_pid_limit_beside_a_healthy_job(
        tmp_path: Path, engine: docker.DockerClient, runner_id: str):
    executor = DockerExecutor(SETTINGS, runner_id=runner_id, client=engine)
    hog = execution(tmp_path, 'x=$(head -c 500000000 /dev/zero | tr "\\0" a)', resources=Resources(memory="32m"))
    # Each function call forks two more, for ever: stopped only by the pid limit (or timeout).
    bomb = execution(tmp_path, "bomb() { bomb | bomb & }; bomb; sleep 5; echo still here", timeout=30)
    healthy = execution(tmp_path, 'for i in $(seq 1 20); do echo "step $i"; sleep 0.1; done; echo healthy done')
    outputs = [Collected() for _ in range(3)]
    started = time.monotonic()
    hogged, bombed, fine = await asyncio.gather(
        *(executor.run(job, output) for job, output in zip((hog, bomb, healthy), outputs, strict=True)))

    assert hogged.error == OUT_OF_MEMORY and hogged.exit_code != 0, outputs[0].text
    assert not hogged.timed_out
    assert not bombed.timed_out and "can't fork" in outputs[1].text, outputs[1].text
    assert fine == Outcome(exit_code=0) and "healthy done" in outputs[2].text
    assert time.monotonic() - started < 30


async def test_a_timeout_kills_and_removes_the_container(tmp_path: Path, engine: docker.DockerClient, runner_id: str):
    executor = DockerExecutor(SETTINGS, runner_id=runner_id, client=engine)
    job = execution(tmp_path, "echo before; sleep 60; echo after", timeout=2)
    output = Collected()
    outcome = await executor.run(job, output)
    assert outcome == Outcome(exit_code=None, error="timed out", timed_out=True)
    assert "before" in output.text and "after" not in output.text
    assert _containers(engine, "ledgerci.job", job.labels["job"]) == []


async def test_a_missing_image_with_pull_never_is_the_systems_failure_not_the_jobs(
        tmp_path: Path, engine: docker.DockerClient, runner_id: str):
    executor = DockerExecutor(SETTINGS, runner_id=runner_id, client=engine)
    outcome = await executor.run(execution(tmp_path, "true", image="ledgerci-test/absent:1"), Collected())
    assert outcome.exit_code is None
    assert outcome.error == "image ledgerci-test/absent:1 is not on this runner, and its pull policy is never"


class Listener:
    """A TCP port on every interface of the runner's host, as a PostgreSQL or NATS set to
    listen on all interfaces would be: what a job must not reach."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("0.0.0.0", 0), reuse_port=True)
        self.port = self.socket.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self.socket.close()


async def test_a_job_cannot_reach_the_hosts_postgresql_or_nats(
        tmp_path: Path, engine: docker.DockerClient, runner_id: str, postgres_server, nats_server):
    # The host's address on Docker's default bridge (its subnet's first), and all the others.
    bridge = str(next(ipaddress.ip_network(engine.networks.get("bridge").attrs["IPAM"]["Config"][0]["Subnet"]).hosts()))
    addresses = {"127.0.0.1", bridge, *_host_addresses()}
    listener = Listener()
    ports = {"postgresql": postgres_server.port, "nats": nats_server.port, "all-interfaces": listener.port}
    targets = [(name, address, port) for name, port in ports.items() for address in sorted(addresses)]
    probe = "\n".join(
        f'if nc -w 2 {address} {port} </dev/null 2>/dev/null; then echo "reached {name} at {address}"; '
        f'else echo "blocked {name} at {address}"; fi'
        for name, address, port in targets)
    try:
        isolated = Collected()
        outcome = await DockerExecutor(SETTINGS, runner_id=runner_id, client=engine).run(
            execution(tmp_path, probe), isolated)
        assert outcome.exit_code == 0, isolated.text
        assert "reached" not in isolated.text, isolated.text
        assert isolated.text.count("blocked") == len(targets)

        # The probe does find an open port when there is a way: on Docker's default bridge the
        # host's gateway address answers. (An `internal` bridge has the same gateway.)
        bridged = Collected()
        await DockerExecutor(replace(SETTINGS, network="bridge"), runner_id=runner_id, client=engine).run(
            execution(tmp_path, probe), bridged)
        assert f"reached all-interfaces at {bridge}" in bridged.text, bridged.text
    finally:
        listener.close()


def _host_addresses() -> list[str]:
    """Every IPv4 address of the host's interfaces (SIOCGIFADDR: no tool needs installing)."""
    addresses = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # an interface without an IPv4 address
            addresses.append(socket.inet_ntoa(answer[20:24]))
    return addresses


async def _wait_for_container(engine: docker.DockerClient, job: Execution, output: Collected, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _containers(engine, "ledgerci.job", job.labels["job"])
        if found and found[0]["State"] == "running" and b"started" in output.data:
            return engine.containers.get(found[0]["Id"])
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no running container for job {job.labels['job']}; output {output.text!r}")


# ----- every service as a process, the runner on the Docker executor ---------------------------

@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, fresh_nats_server, engine: docker.DockerClient,
            runner_id: str) -> Iterator[LedgerCluster]:
    """Named like conftest's fixture, so that its hook prints the service logs on a failure."""
    cluster = LedgerCluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url, extra_env={
        "LEDGERCI_EXECUTOR": "docker", "LEDGERCI_DOCKER_PULL": "never", "LEDGERCI_RUNNER_ID": runner_id,
        "LEDGERCI_RUNNER_SLOTS": "3", "LEDGERCI_LEASE_SECONDS": "5",
        "LEDGERCI_DOCKER_MAX_MEMORY": "256m", "LEDGERCI_DOCKER_PIDS_LIMIT": "128",
        # Half a core each: a fork bomb spinning cannot take the machine from the other jobs.
        "LEDGERCI_DOCKER_MAX_CPUS": "0.5",
    })
    with cluster.running():
        yield cluster


THREE_JOBS = f"""\
image: {BUSYBOX_IMAGE}
env:
  FROM_FILE: workflow-env
jobs:
  - name: first
    run: |
      echo "first in $(cat /etc/ledgerci-image) as $(id -u) sees $(cat hello.txt) container=$(hostname)"
      echo "run=$LEDGERCI_RUN_ID job=$LEDGERCI_JOB_ID attempt=$LEDGERCI_ATTEMPT commit=$LEDGERCI_COMMIT env=$FROM_FILE"
      objects=$(cat .git/objects/info/alternates)  # git objects borrowed from the runner's mirror
      ls "$objects/pack" >/dev/null && echo "objects readable"
      touch "$objects/x" 2>/dev/null || echo "objects read-only"
      mkdir -p dist && echo "made by first" > dist/made.txt
      sleep 1
    artifacts:
      paths: [dist/]
  - name: second
    image: {OTHER_IMAGE}
    run: |
      echo "second in $(cat /etc/ledgerci-image) as $(id -u) sees $(cat hello.txt) container=$(hostname)"
      echo "second reads $(cat dist/made.txt)" && echo more >> dist/made.txt && echo "second may write it"
  - name: third
    resources: {{cpus: 0.5, memory: 64m}}
    run: |
      echo "third in $(cat /etc/ledgerci-image) as $(id -u) sees $(cat hello.txt) container=$(hostname)"
"""

MEMORY_HOG = f"""\
image: {BUSYBOX_IMAGE}
jobs:
  - name: hog
    resources: {{memory: 32m}}
    run: x=$(head -c 500000000 /dev/zero | tr "\\0" a)
"""

FORK_BOMB = f"""\
image: {BUSYBOX_IMAGE}
jobs:
  - name: bomb
    timeout: 60s
    run: bomb() {{ bomb | bomb & }}; bomb; sleep 2
"""


def _tenant_pushes(admin: Api, tmp_path: Path, workflow: str) -> tuple[Api, str, str]:
    """A tenant of its own pushes `workflow`: (its client, the run id, the commit)."""
    repo = GitRepo(tmp_path / f"repo-{secrets.token_hex(4)}")
    commit = repo.commit({".ledgerci.yml": workflow, "hello.txt": "the commit's file"})
    tenant_id, token = admin.tenant()
    tenant = Api(admin.url, token)
    pushed = tenant.push(admin.repository(tenant_id, repo.clone_url), commit)
    assert pushed.status_code == 202, pushed.text
    return tenant, pushed.json()["run_id"], commit


def test_three_jobs_run_in_their_own_containers_of_their_images_beside_another_tenants_hog_and_bomb(
        tmp_path: Path, cluster: LedgerCluster, engine: docker.DockerClient):
    admin = Api(cluster.url, ADMIN_TOKEN)
    tenant, run_id, commit = _tenant_pushes(admin, tmp_path, THREE_JOBS)
    hog_tenant, hog_run_id, _ = _tenant_pushes(admin, tmp_path, MEMORY_HOG)
    bomb_tenant, bomb_run_id, _ = _tenant_pushes(admin, tmp_path, FORK_BOMB)

    run = tenant.wait_run(run_id, timeout=120)
    assert run["status"] == "succeeded", [(j["name"], j["status"], j["error"], tenant.log(j["id"]))
                                          for j in run["jobs"]]
    logs = [tenant.log(job["id"]) for job in run["jobs"]]
    images = (BUSYBOX_IMAGE, OTHER_IMAGE, BUSYBOX_IMAGE)
    for job, log, image in zip(run["jobs"], logs, images, strict=True):
        assert f"{job['name']} in {image} as 65534 sees the commit's file" in log, log
    assert f"run={run_id} job={run['jobs'][0]['id']} attempt=1 commit={commit} env=workflow-env" in logs[0]
    assert "objects readable" in logs[0] and "objects read-only" in logs[0]
    # The first job's artifact, restored into the next container's workspace for its non-root user.
    assert "second reads made by first" in logs[1] and "second may write it" in logs[1]
    containers = {log.split("container=")[1].split()[0] for log in logs}
    assert len(containers) == 3  # a container of its own for each job
    started = [e for e in tenant.events(run_id) if e["type"] == "JobStarted"]
    assert [e["data"]["executor"] for e in started] == ["docker"] * 3

    hog = hog_tenant.wait_run(hog_run_id, timeout=120)
    assert (hog["status"], hog["jobs"][0]["status"], hog["jobs"][0]["error"]) == ("failed", "failed", OUT_OF_MEMORY)
    assert "ledgerci: out of memory" in hog_tenant.log(hog["jobs"][0]["id"])
    bomb = bomb_tenant.wait_run(bomb_run_id, timeout=120)
    # Stopped by the pid limit (fork fails with EAGAIN), not by its timeout; whether the job's
    # own shell got its last fork decides only its exit code.
    assert bomb["jobs"][0]["error"] != "timed out", bomb["jobs"]
    assert "can't fork" in bomb_tenant.log(bomb["jobs"][0]["id"])
    # At the same time: each of them ran while the first tenant's jobs were running.
    for other in (hog, bomb):
        job = other["jobs"][0]
        assert job["started_at"] < run["jobs"][-1]["finished_at"] and job["finished_at"] > run["jobs"][0]["started_at"]
    for finished in (run, hog, bomb):
        for job in finished["jobs"]:
            assert _containers(engine, "ledgerci.job", job["id"]) == []  # removed after each job
    # The workspaces go too (just after the outcome is recorded), files the job's uid wrote included.
    workspaces = cluster.base_dir / "runner" / "workspaces"
    deadline = time.monotonic() + 10
    while any(workspaces.iterdir()):
        assert time.monotonic() < deadline, list(workspaces.iterdir())
        time.sleep(0.05)
    assert check_invariants(cluster.env["LEDGERCI_DATABASE_URL"]) == []


CACHED_IN_A_CONTAINER = f"""\
image: {BUSYBOX_IMAGE}
jobs:
  - name: deps
    run: |
      if [ -f .venv/marker ]; then
        echo "restored: $(cat .venv/marker) / owned by $(stat -c %u .venv/marker) / $(.venv/bin/tool)"
        echo "written by $(id -u)" >> .venv/marker && echo "may write it"
        touch .venv/lib/new && echo "may add to it"
      else
        echo "cold start as $(id -u)"
        mkdir -p .venv/bin .venv/lib && echo "made in a container" > .venv/marker
        printf '#!/bin/sh\\necho tool runs\\n' > .venv/bin/tool && chmod 755 .venv/bin/tool
      fi
    cache:
      key: deps-${{{{ hashFiles('requirements.txt') }}}}
      paths: [.venv/]
"""


def test_a_cache_saved_from_one_container_is_restored_into_a_later_runs_for_its_non_root_user(
        tmp_path: Path, cluster: LedgerCluster):
    admin = Api(cluster.url, ADMIN_TOKEN)
    repo = GitRepo(tmp_path / "cached")
    tenant_id, token = admin.tenant()
    tenant, repository_id = Api(admin.url, token), admin.repository(tenant_id, repo.clone_url)

    def run(n: int) -> tuple[dict, str, list[tuple]]:
        commit = repo.commit({".ledgerci.yml": CACHED_IN_A_CONTAINER, "requirements.txt": "x\n", "n": str(n)})
        done = tenant.wait_run(tenant.push(repository_id, commit).json()["run_id"], timeout=120)
        assert done["status"] == "succeeded", tenant.explain(done["id"])
        events = [(e["type"], e["data"].get("result")) for e in tenant.events(done["id"])
                  if e["type"] in ("CacheRestored", "CacheSaved")]
        return done, tenant.log(done["jobs"][0]["id"]), events

    _, first_log, first_events = run(1)
    assert "cold start as 65534" in first_log, first_log
    assert first_events == [("CacheRestored", "miss"), ("CacheSaved", None)]

    # Restored by the runner (root) before the container starts: the job's uid owns what it
    # finds, reads it, runs it, and writes beside it.
    _, second_log, second_events = run(2)
    assert "restored: made in a container / owned by 65534 / tool runs" in second_log, second_log
    assert "may write it" in second_log and "may add to it" in second_log, second_log
    assert second_events == [("CacheRestored", "hit")]
    assert check_invariants(cluster.env["LEDGERCI_DATABASE_URL"]) == []


RETRIED_AFTER_A_LOST_RUNNER = f"""\
image: {BUSYBOX_IMAGE}
jobs:
  - name: long
    retries: 1
    run: |
      if [ "$LEDGERCI_ATTEMPT" = 1 ]; then echo "attempt 1 started"; sleep 300; fi
      echo "attempt $LEDGERCI_ATTEMPT done"
"""


def test_a_runner_sigkilled_mid_job_leaves_a_container_that_its_next_start_removes(
        tmp_path: Path, cluster: LedgerCluster, engine: docker.DockerClient):
    admin = Api(cluster.url, ADMIN_TOKEN)
    tenant, run_id, _ = _tenant_pushes(admin, tmp_path, RETRIED_AFTER_A_LOST_RUNNER)
    run = tenant.wait_run(run_id, until=lambda r: bool(r["jobs"]) and r["jobs"][0]["status"] == "running")
    job_id = run["jobs"][0]["id"]
    deadline = time.monotonic() + 60
    while "attempt 1 started" not in tenant.log(job_id):
        assert time.monotonic() < deadline, "attempt 1 never started"
        time.sleep(0.1)

    cluster.kill("runner")  # SIGKILL: no chance to clean up
    [left] = _containers(engine, "ledgerci.job", job_id)
    assert left["State"] == "running" and left["Labels"]["ledgerci.attempt"] == "1"

    cluster.start("runner")  # the same runner id, as a restarted machine would have
    deadline = time.monotonic() + 60
    while any(c["Labels"]["ledgerci.attempt"] == "1" for c in _containers(engine, "ledgerci.job", job_id)):
        assert time.monotonic() < deadline, "the restarted runner did not remove its left-over container"
        time.sleep(0.1)

    run = tenant.wait_run(run_id, timeout=120)
    job = run["jobs"][0]
    assert (run["status"], job["status"], job["attempt"]) == ("succeeded", "succeeded", 2), run
    assert "attempt 2 done" in tenant.log(job_id)
    abandoned = [e for e in tenant.events(run_id) if e["type"] == "JobAttemptAbandoned"]
    assert [(e["data"]["attempt"], e["data"]["reason"]) for e in abandoned] == [(1, "runner lost")]
    assert check_invariants(cluster.env["LEDGERCI_DATABASE_URL"]) == []
