"""Tenants: isolation on every route, quotas and push rates, changes as events, revocable tokens.

Against real processes: every service on PostgreSQL and a nats-server, two gateways where the
rate limit must hold across replicas.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_faults import wait_for
from tests.support.api import Api
from tests.support.cluster import LedgerCluster
from tests.support.git_repo import GitRepo

pytestmark = pytest.mark.e2e

WORKFLOW = ("jobs:\n  - name: only\n    run: echo hello from $LEDGERCI_JOB_NAME | tee out.txt\n"
            "    artifacts:\n      paths: [out.txt]\n")


def tenant_with_a_run(admin: Api, tmp_path: Path, name: str) -> dict[str, Any]:
    """A tenant, its token, a repository and one finished run."""
    tenant_id, token = admin.tenant(name)
    repo = GitRepo(tmp_path / name)
    commit = repo.commit({".ledgerci.yml": WORKFLOW})
    repository_id = admin.repository(tenant_id, repo.clone_url, f"{name}-repo")
    own = Api(admin.url, token)
    run = own.wait_run(own.push(repository_id, commit).json()["run_id"])
    assert run["status"] == "succeeded", own.explain(run["id"])
    return {"tenant": tenant_id, "token": token, "api": own, "repository": repository_id, "repo": repo,
            "run": run["id"], "job": run["jobs"][0]["id"], "commit": commit}


# Each tenant-scoped route, asked by tenant B about tenant A's resource: 404, as if it did not exist.
CROSS_TENANT_404 = [
    ("GET", "/api/v1/runs/{run_id}", lambda a: ("/api/v1/runs/" + a["run"], None)),
    ("POST", "/api/v1/runs/{run_id}/cancel", lambda a: (f"/api/v1/runs/{a['run']}/cancel", None)),
    ("POST", "/api/v1/runs/{run_id}/rerun", lambda a: (f"/api/v1/runs/{a['run']}/rerun", None)),
    ("GET", "/api/v1/runs/{run_id}/events", lambda a: (f"/api/v1/runs/{a['run']}/events", None)),
    ("GET", "/api/v1/jobs/{job_id}/log", lambda a: (f"/api/v1/jobs/{a['job']}/log", None)),
    # The live streams (the run has ended, so the owner's stream ends at once); the WebSocket
    # is not in the schema: tests/e2e/test_live.py shows it answers "not found" likewise.
    ("GET", "/api/v1/runs/{run_id}/stream", lambda a: (f"/api/v1/runs/{a['run']}/stream", None)),
    ("GET", "/api/v1/jobs/{job_id}/log/stream", lambda a: (f"/api/v1/jobs/{a['job']}/log/stream", None)),
    ("POST", "/api/v1/push", lambda a: ("/api/v1/push", {"repository_id": a["repository"], "commit": a["commit"]})),
    ("POST", "/api/v1/repositories",
     lambda a: ("/api/v1/repositories", {"id": "stolen", "tenant_id": a["tenant"], "clone_url": a["repo"].clone_url})),
    ("GET", "/api/v1/repositories/{repository_id}", lambda a: (f"/api/v1/repositories/{a['repository']}", None)),
    ("GET", "/api/v1/repositories/{repository_id}/schedules",
     lambda a: (f"/api/v1/repositories/{a['repository']}/schedules", None)),
    ("PUT", "/api/v1/repositories/{repository_id}/webhook",
     lambda a: (f"/api/v1/repositories/{a['repository']}/webhook", {"secret": "a-webhook-secret-1234"})),
    ("DELETE", "/api/v1/repositories/{repository_id}/webhook",
     lambda a: (f"/api/v1/repositories/{a['repository']}/webhook", None)),
    ("PUT", "/api/v1/repositories/{repository_id}/status-target",
     lambda a: (f"/api/v1/repositories/{a['repository']}/status-target",
                {"kind": "github", "api_url": "https://api.github.com", "project": "org/app", "token": "tok-1234"})),
    ("DELETE", "/api/v1/repositories/{repository_id}/status-target",
     lambda a: (f"/api/v1/repositories/{a['repository']}/status-target", None)),
    ("GET", "/api/v1/runs/{run_id}/statuses", lambda a: (f"/api/v1/runs/{a['run']}/statuses", None)),
    ("GET", "/api/v1/runs/{run_id}/artifacts", lambda a: (f"/api/v1/runs/{a['run']}/artifacts", None)),
    ("GET", "/api/v1/runs/{run_id}/artifacts/{name}",
     lambda a: (f"/api/v1/runs/{a['run']}/artifacts/only/out.txt", None)),
    ("GET", "/api/v1/runs/{run_id}/audit", lambda a: (f"/api/v1/runs/{a['run']}/audit", None)),
    # Secrets: set, listed, deleted, in this order (the owner's own delete finds what it set).
    ("PUT", "/api/v1/repositories/{repository_id}/secrets/{name}",
     lambda a: (f"/api/v1/repositories/{a['repository']}/secrets/TOKEN", {"value": "repository-value"})),
    ("GET", "/api/v1/repositories/{repository_id}/secrets",
     lambda a: (f"/api/v1/repositories/{a['repository']}/secrets", None)),
    ("DELETE", "/api/v1/repositories/{repository_id}/secrets/{name}",
     lambda a: (f"/api/v1/repositories/{a['repository']}/secrets/TOKEN", None)),
    ("PUT", "/api/v1/tenants/{tenant_id}/secrets/{name}",
     lambda a: (f"/api/v1/tenants/{a['tenant']}/secrets/TOKEN", {"value": "tenant-value"})),
    ("GET", "/api/v1/tenants/{tenant_id}/secrets", lambda a: (f"/api/v1/tenants/{a['tenant']}/secrets", None)),
    ("DELETE", "/api/v1/tenants/{tenant_id}/secrets/{name}",
     lambda a: (f"/api/v1/tenants/{a['tenant']}/secrets/TOKEN", None)),
    # Outgoing webhooks: a subscription, its delivery log, a redelivery; deleted last.
    ("POST", "/api/v1/tenants/{tenant_id}/webhooks",
     lambda a: (f"/api/v1/tenants/{a['tenant']}/webhooks", {"url": "https://hooks.example.invalid/", "events": ["*"]})),
    ("GET", "/api/v1/tenants/{tenant_id}/webhooks", lambda a: (f"/api/v1/tenants/{a['tenant']}/webhooks", None)),
    ("GET", "/api/v1/tenants/{tenant_id}/webhooks/{subscription_id}",
     lambda a: (f"/api/v1/tenants/{a['tenant']}/webhooks/{a['subscription']}", None)),
    ("GET", "/api/v1/tenants/{tenant_id}/webhooks/{subscription_id}/deliveries",
     lambda a: (f"/api/v1/tenants/{a['tenant']}/webhooks/{a['subscription']}/deliveries", None)),
    ("GET", "/api/v1/tenants/{tenant_id}/webhooks/{subscription_id}/deliveries/{delivery_id}",
     lambda a: (f"/api/v1/tenants/{a['tenant']}/webhooks/{a['subscription']}/deliveries/{a['delivery']}", None)),
    ("POST", "/api/v1/tenants/{tenant_id}/webhooks/{subscription_id}/deliveries/{delivery_id}/redeliver",
     lambda a: (f"/api/v1/tenants/{a['tenant']}/webhooks/{a['subscription']}/deliveries/{a['delivery']}/redeliver",
                None)),
    ("DELETE", "/api/v1/tenants/{tenant_id}/webhooks/{subscription_id}",
     lambda a: (f"/api/v1/tenants/{a['tenant']}/webhooks/{a['subscription']}", None)),
    # Last: the owner's own delete of its repository goes through.
    ("DELETE", "/api/v1/repositories/{repository_id}", lambda a: (f"/api/v1/repositories/{a['repository']}", None)),
]
# The admin's routes: a tenant token is refused (403) whichever tenant they name.
ADMIN_ONLY = [
    ("POST", "/api/v1/tenants", lambda a: ("/api/v1/tenants", {"id": "another"})),
    ("GET", "/api/v1/tenants", lambda a: ("/api/v1/tenants", None)),
    ("GET", "/api/v1/audit", lambda a: ("/api/v1/audit", None)),
    ("GET", "/api/v1/tenants/{tenant_id}", lambda a: (f"/api/v1/tenants/{a['tenant']}", None)),
    ("PATCH", "/api/v1/tenants/{tenant_id}", lambda a: (f"/api/v1/tenants/{a['tenant']}", {"weight": 9})),
    ("POST", "/api/v1/tenants/{tenant_id}/tokens", lambda a: (f"/api/v1/tenants/{a['tenant']}/tokens", None)),
    ("DELETE", "/api/v1/tenants/{tenant_id}/tokens/{token_id}",
     lambda a: (f"/api/v1/tenants/{a['tenant']}/tokens/00000000-0000-0000-0000-000000000000", None)),
]
# Lists: filtered to the caller's own, so asking about A's repository finds nothing.
FILTERED = [("GET", "/api/v1/runs"), ("GET", "/api/v1/repositories")]
# No token: a git host's delivery is authenticated by its signature with the repository's
# webhook secret (tests/e2e/test_webhooks.py).
PUBLIC = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
          ("POST", "/api/v1/hooks/{host}/{repository_id}")]


def test_every_route_is_covered_by_the_isolation_table(cluster: LedgerCluster, admin: Api) -> None:
    """A route added without saying how it isolates tenants fails here."""
    schema = admin.http.get("/schema/openapi.json").json()
    routes = {(method.upper(), path) for path, item in schema["paths"].items() for method in item
              if method in ("get", "post", "put", "patch", "delete")}
    covered = {(m, p) for m, p, _ in CROSS_TENANT_404 + ADMIN_ONLY} | set(FILTERED) | set(PUBLIC)
    assert routes == covered


def with_a_webhook_delivery(a: dict[str, Any]) -> None:
    """A subscription of the tenant's, and one delivery queued for it (to a name that never
    resolves: the delivery stays in the log, retried)."""
    own: Api = a["api"]
    made = own.http.post(f"/api/v1/tenants/{a['tenant']}/webhooks",
                         json={"url": "https://hooks.example.invalid/ci", "events": ["run.succeeded"]})
    assert made.status_code == 201, made.text
    a["subscription"] = made.json()["subscription"]["id"]
    commit = a["repo"].commit({".ledgerci.yml": WORKFLOW, "again": "1"})
    own.wait_run(own.push(a["repository"], commit).json()["run_id"])
    deliveries = f"/api/v1/tenants/{a['tenant']}/webhooks/{a['subscription']}/deliveries"
    wait_for(lambda: own.http.get(deliveries).json()["deliveries"], 30, "the delivery to be queued")
    a["delivery"] = own.http.get(deliveries).json()["deliveries"][0]["id"]


def test_another_tenants_resources_answer_404_on_every_route(tmp_path: Path, admin: Api) -> None:
    a = tenant_with_a_run(admin, tmp_path, "alpha")
    with_a_webhook_delivery(a)
    b = tenant_with_a_run(admin, tmp_path, "beta")
    for method, route, make in CROSS_TENANT_404:
        path, body = make(a)
        answer = b["api"].http.request(method, path, json=body)
        assert answer.status_code == 404, (route, answer.status_code, answer.text)
        assert answer.json()["status_code"] == 404
        # The owner is answered (or, for a push of the same commit, answered as a duplicate).
        assert a["api"].http.request(method, path, json=body).status_code < 400, route
    for method, route, make in ADMIN_ONLY:
        path, body = make(a)
        assert b["api"].http.request(method, path, json=body).status_code == 403, route
    # Filtering by another tenant's repository is the same 404 as an unknown one, not an empty page.
    listed = b["api"].http.get("/api/v1/runs", params={"repository_id": a["repository"]})
    assert listed.status_code == 404, listed.text
    assert {run["tenant_id"] for run in b["api"].http.get("/api/v1/runs").json()["runs"]} == {"beta"}
    assert [r["id"] for r in b["api"].http.get("/api/v1/repositories").json()["repositories"]] == [b["repository"]]
    # Nothing of alpha's changed: no cancel, no rerun, no repository registered for it by beta.
    assert [r["id"] for r in a["api"].http.get("/api/v1/runs").json()["runs"]].count(a["run"]) == 1
    assert len(a["api"].events(a["run"])) == len(admin.events(a["run"]))


def test_tenant_changes_are_events_and_a_revoked_token_stops_at_once(tmp_path: Path, admin: Api) -> None:
    tenant_id, _ = admin.tenant("gamma")
    changed = admin.http.patch(f"/api/v1/tenants/{tenant_id}", json={"weight": 4, "max_concurrent_jobs": 3})
    assert changed.status_code == 200, changed.text
    assert changed.json() | {"weight": 4, "max_concurrent_jobs": 3} == changed.json()
    assert admin.http.get(f"/api/v1/tenants/{tenant_id}").json()["weight"] == 4
    unknown = admin.http.patch(f"/api/v1/tenants/{tenant_id}", json={"weight": 0})
    assert unknown.status_code == 422
    issued = admin.http.post(f"/api/v1/tenants/{tenant_id}/tokens").json()
    holder = Api(admin.url, issued["token"])
    assert holder.http.get("/api/v1/runs").status_code == 200
    revoked = admin.http.delete(f"/api/v1/tenants/{tenant_id}/tokens/{issued['token_id']}")
    assert revoked.status_code == 204, revoked.text
    assert holder.http.get("/api/v1/runs").status_code == 401
    other, _ = admin.tenant("delta")
    assert admin.http.delete(f"/api/v1/tenants/{other}/tokens/{issued['token_id']}").status_code == 404


def _wait_for_a_fresh_minute(margin: float = 15.0) -> None:
    """Start the burst early in a minute, so it falls in one rate window."""
    second = datetime.now().second + datetime.now().microsecond / 1e6
    if second > 60 - margin:
        time.sleep(60 - second + 0.2)


def test_two_gateways_together_accept_at_most_the_push_rate(tmp_path: Path, cluster: LedgerCluster,
                                                            admin: Api) -> None:
    cluster.start("gateway#2")
    second_gateway = cluster.gateway_url("gateway#2")
    admin.http.post("/api/v1/tenants", json={"id": "eps", "pushes_per_minute": 5}).raise_for_status()
    token = admin.http.post("/api/v1/tenants/eps/tokens").json()["token"]
    repo = GitRepo(tmp_path / "eps")
    commits = [repo.commit({".ledgerci.yml": WORKFLOW, "n.txt": str(n)}) for n in range(16)]
    repository_id = admin.repository("eps", repo.clone_url, "eps-repo")
    gateways = [Api(admin.url, token), Api(second_gateway, token)]
    _wait_for_a_fresh_minute()

    def push(n: int) -> httpx.Response:
        return gateways[n % 2].push(repository_id, commits[n])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(push, range(len(commits))))
    accepted = [a for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 429]
    assert len(accepted) == 5 and len(refused) == len(commits) - 5, [a.status_code for a in answers]
    for answer in refused:
        assert 1 <= int(answer.headers["Retry-After"]) <= 60
        assert "pushes_per_minute quota of 5" in answer.json()["detail"]
    # Nothing accepted is lost: every accepted push became a run that ran.
    for answer in accepted:
        assert admin.wait_run(answer.json()["run_id"])["status"] == "succeeded"


def test_a_tenant_over_its_queued_runs_quota_is_told_which_quota(tmp_path: Path, cluster: LedgerCluster,
                                                                admin: Api) -> None:
    cluster.kill("runner")  # nothing starts: runs stay queued
    admin.http.post("/api/v1/tenants", json={"id": "zeta", "max_queued_runs": 2}).raise_for_status()
    repo = GitRepo(tmp_path / "zeta")
    commits = [repo.commit({".ledgerci.yml": WORKFLOW, "n.txt": str(n)}) for n in range(3)]
    repository_id = admin.repository("zeta", repo.clone_url, "zeta-repo")
    queued = [admin.push(repository_id, commit).json()["run_id"] for commit in commits[:2]]
    for run_id in queued:
        admin.wait_run(run_id, until=lambda run: run["jobs"] and run["jobs"][0]["status"] == "queued")
    refused = admin.push(repository_id, commits[2])
    assert refused.status_code == 429, refused.text
    assert "max_queued_runs quota is 2" in refused.json()["detail"] and refused.headers["Retry-After"]
    cluster.start("runner")
    for run_id in queued:
        assert admin.wait_run(run_id)["status"] == "succeeded"
    assert admin.push(repository_id, commits[2]).status_code == 202
