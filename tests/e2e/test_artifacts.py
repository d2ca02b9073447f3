"""Artifacts (issue 20), end to end on PostgreSQL, a real nats-server (its object store) and
runner processes: a file made by one job is in the next job's workspace and downloads with the
right SHA-256; a link in the workspace is never stored; another tenant gets 404 on every
artifact route; an expired artifact leaves the object store and answers 410; a runner
SIGKILLed while it uploads leaves no artifact recorded for that attempt, and the retry stores
and records each file once."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import nats
import pytest
from nats.js.errors import ObjectNotFoundError

from domain.artifacts import BUCKET as ARTIFACTS
from tests.e2e.test_faults import LEASE_SECONDS, assert_invariants, start_cluster, wait_for
from tests.support.api import Api
from tests.support.cluster import ADMIN_TOKEN, LedgerCluster
from tests.support.git_repo import GitRepo

pytestmark = pytest.mark.e2e

PASSES_FILES = """\
jobs:
  - name: build
    run: |
      mkdir -p dist/sub
      head -c 300000 /dev/urandom > dist/app.bin
      echo nested > dist/sub/notes.txt
      echo '<testsuite tests="1"/>' > report.xml
      ln -s /etc/passwd dist/leak
      echo not-listed > other.txt
    artifacts:
      paths: [dist/, report.xml]
  - name: test
    run: |
      ls dist/ dist/sub
      sha256sum dist/app.bin report.xml
"""


def tenant_repository(admin: Api, tmp_path: Path, workflow: str, name: str) -> tuple[Api, str, str]:
    tenant_id, token = admin.tenant(name)
    repo = GitRepo(tmp_path / name)
    commit = repo.commit({".ledgerci.yml": workflow})
    return Api(admin.url, token), admin.repository(tenant_id, repo.clone_url, f"{name}-repo"), commit


def test_a_file_of_one_job_is_in_the_next_ones_workspace_and_downloads_with_its_sha256(
        tmp_path: Path, cluster: LedgerCluster, admin: Api) -> None:
    owner, repository_id, commit = tenant_repository(admin, tmp_path, PASSES_FILES, "alpha")
    run = owner.wait_run(owner.push(repository_id, commit).json()["run_id"])
    assert run["status"] == "succeeded", owner.explain(run["id"])

    listed = owner.http.get(f"/api/v1/runs/{run['id']}/artifacts").json()["artifacts"]
    assert [a["name"] for a in listed] == ["build/dist/app.bin", "build/dist/sub/notes.txt", "build/report.xml"]
    by_path = {a["path"]: a for a in listed}
    test_log = owner.log(run["jobs"][1]["id"])
    assert "notes.txt" in test_log and "leak" not in test_log  # the link was not stored
    for path in ("dist/app.bin", "report.xml"):
        assert f"{by_path[path]['sha256']}  {path}" in test_log  # what the next job saw is what was stored
        got = owner.http.get(f"/api/v1/runs/{run['id']}/artifacts/build/{path}")
        assert got.status_code == 200, got.text
        assert hashlib.sha256(got.content).hexdigest() == by_path[path]["sha256"] == got.headers["X-Ledgerci-Sha256"]
        assert int(got.headers["Content-Length"]) == len(got.content) == by_path[path]["size"]
    assert by_path["dist/app.bin"]["size"] == 300_000

    # Another tenant: 404 on the list and on every download, as if the run did not exist.
    other, _, _ = tenant_repository(admin, tmp_path, PASSES_FILES, "beta")
    assert other.http.get(f"/api/v1/runs/{run['id']}/artifacts").status_code == 404
    assert other.http.get(f"/api/v1/runs/{run['id']}/artifacts/build/report.xml").status_code == 404
    assert owner.http.get(f"/api/v1/runs/{run['id']}/artifacts/build/nothing").status_code == 404
    assert_invariants(cluster)


def artifact_store(nats_url: str, name: str) -> tuple[bool, dict[str, int]]:
    """(whether the object store answers for the object `name`, the messages of each subject of
    the artifacts' stream: its objects' chunks and names)."""
    async def look() -> tuple[bool, dict[str, int]]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            try:
                await (await js.object_store(ARTIFACTS)).get_info(name)
                found = True
            except ObjectNotFoundError:
                found = False
            info = await js.stream_info(f"OBJ_{ARTIFACTS}", subjects_filter=f"$O.{ARTIFACTS}.>")
            return found, dict(info.state.subjects or {})
        finally:
            await nc.close()

    return asyncio.run(look())


def test_an_expired_artifact_is_removed_recorded_and_answers_410(tmp_path: Path, cluster: LedgerCluster,
                                                                   admin: Api, fresh_nats_server) -> None:
    workflow = ("jobs:\n  - name: build\n    run: echo hi > out.txt\n"
                "    artifacts:\n      paths: [out.txt]\n      expire_in: 2s\n")
    owner, repository_id, commit = tenant_repository(admin, tmp_path, workflow, "gamma")
    run = owner.wait_run(owner.push(repository_id, commit).json()["run_id"])
    assert run["status"] == "succeeded", owner.explain(run["id"])
    path = f"/api/v1/runs/{run['id']}/artifacts/build/out.txt"
    assert owner.http.get(path).content == b"hi\n"  # read from the object store
    [uploaded] = [e["data"] for e in owner.events(run["id"]) if e["type"] == "ArtifactUploaded"]
    # The reaper removes it from the object store and records that in the run's history.
    expired = wait_for(lambda: [e for e in owner.events(run["id"]) if e["type"] == "ArtifactsExpired"], 20,
                       "the expiry to be recorded")
    assert [e["data"]["paths"] for e in expired] == [["out.txt"]]
    # Removed before it was recorded: the store knows no such object and holds none of its
    # bytes (this cluster's only artifact; a name's deleted marker, nats-py's, is all that may be left).
    found, subjects = artifact_store(fresh_nats_server.url, uploaded["object"])
    assert not found and [s for s in subjects if s.startswith(f"$O.{ARTIFACTS}.C.")] == [], subjects
    assert set(subjects) <= {f"$O.{ARTIFACTS}.M.{base64.urlsafe_b64encode(uploaded['object'].encode()).decode()}"}
    gone = wait_for(lambda: (answer := owner.http.get(path)).status_code == 410 and answer, 10, "410")
    assert "expired at" in gone.json()["detail"]
    (listed,) = owner.http.get(f"/api/v1/runs/{run['id']}/artifacts").json()["artifacts"]
    assert listed["removed_at"] is not None
    assert_invariants(cluster)


def test_an_artifact_over_the_tenants_quota_fails_the_job_with_the_reason(tmp_path: Path, cluster: LedgerCluster,
                                                                           admin: Api) -> None:
    workflow = ("jobs:\n  - name: build\n    run: head -c 2000000 /dev/zero > big.bin\n"
                "    artifacts:\n      paths: [big.bin]\n      expire_in: 30d\n")
    tenant_id, token = admin.tenant("epsilon")
    owner, repo = Api(admin.url, token), GitRepo(tmp_path / "epsilon")
    repository_id, commit = admin.repository(tenant_id, repo.clone_url), repo.commit({".ledgerci.yml": workflow})
    limited = admin.http.patch(f"/api/v1/tenants/{tenant_id}",
                               json={"max_artifact_bytes": 1_000_000, "max_artifact_days": 2})
    assert limited.status_code == 200 and limited.json()["max_artifact_bytes"] == 1_000_000, limited.text
    run = owner.wait_run(owner.push(repository_id, commit).json()["run_id"])
    job = run["jobs"][0]
    assert (run["status"], job["status"]) == ("failed", "failed")
    assert job["error"].startswith(f"artifact quota exceeded: tenant {tenant_id} stores 0 bytes of its "
                                   "1000000, and this job's 1 files are 2000000 bytes more"), job["error"]
    assert "artifact quota exceeded" in owner.log(job["id"])
    assert [e for e in owner.events(run["id"]) if e["type"] == "ArtifactUploaded"] == []

    # Under the quota, the tenant's longest expire_in (2 days) is what its 30d file gets.
    small = repo.commit({".ledgerci.yml": workflow.replace("2000000", "1000")})
    kept = owner.wait_run(owner.push(repository_id, small).json()["run_id"])
    assert kept["status"] == "succeeded", owner.explain(kept["id"])
    (artifact,) = owner.http.get(f"/api/v1/runs/{kept['id']}/artifacts").json()["artifacts"]
    created, expires = (datetime.fromisoformat(artifact[key].replace("Z", "+00:00"))
                        for key in ("created_at", "expires_at"))
    assert expires - created == timedelta(days=2)
    assert_invariants(cluster)


BIG_UPLOAD = """\
jobs:
  - name: build
    retries: 1
    run: head -c 200000000 /dev/zero > big.bin && echo small > small.txt
    artifacts:
      paths: [big.bin, small.txt]
"""


@pytest.fixture
def fault_cluster(tmp_path: Path, postgres_url: str, fresh_nats_server) -> Iterator[LedgerCluster]:
    cluster = start_cluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url)
    cluster.nats_monitor = fresh_nats_server.monitor_port  # type: ignore[attr-defined]
    yield cluster
    cluster.stop_all()


def stored_chunks(monitor_port: int, stream_name: str = "OBJ_LEDGERCI_ARTIFACTS") -> int:
    """Messages in an object store's stream, from nats-server's monitoring endpoint."""
    jsz = httpx.get(f"http://127.0.0.1:{monitor_port}/jsz", params={"streams": "true"}).json()
    return sum(stream["state"]["messages"] for account in jsz.get("account_details", [])
               for stream in account.get("stream_detail", []) if stream["name"] == stream_name)


def test_a_runner_killed_mid_upload_records_nothing_and_the_retry_stores_each_file_once(
        tmp_path: Path, fault_cluster: LedgerCluster) -> None:
    admin = Api(fault_cluster.url, ADMIN_TOKEN)
    owner, repository_id, commit = tenant_repository(admin, tmp_path, BIG_UPLOAD, "delta")
    run_id = owner.push(repository_id, commit).json()["run_id"]
    wait_for(lambda: stored_chunks(fault_cluster.nats_monitor) > 0, 60, "the upload to begin")  # type: ignore[attr-defined]
    holder = owner.run(run_id)["jobs"][0]
    assert holder["status"] == "running" and holder["attempt"] == 1, holder
    fault_cluster.kill(fault_cluster.runner_service(holder["runner_id"]))

    run = owner.wait_run(run_id, timeout=120)
    assert run["status"] == "succeeded", owner.explain(run_id)
    assert run["jobs"][0]["attempt"] == 2
    uploads = [e["data"] for e in owner.events(run_id) if e["type"] == "ArtifactUploaded"]
    assert sorted((u["attempt"], u["path"]) for u in uploads) == [(2, "big.bin"), (2, "small.txt")]
    listed = {a["path"]: a for a in owner.http.get(f"/api/v1/runs/{run_id}/artifacts").json()["artifacts"]}
    assert listed["big.bin"]["size"] == 200_000_000 and listed["big.bin"]["attempt"] == 2
    with owner.http.stream("GET", f"/api/v1/runs/{run_id}/artifacts/build/big.bin") as got:
        digest = hashlib.sha256()
        for chunk in got.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == listed["big.bin"]["sha256"] == hashlib.sha256(b"\0" * 200_000_000).hexdigest()
    assert LEASE_SECONDS < 10
    assert_invariants(fault_cluster)
