"""Hostile input against a real gateway (every service its own process, on PostgreSQL and NATS):
schemathesis over the whole OpenAPI schema, oversized bodies, values the store cannot hold, and
tokens that are almost right."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from domain.ids import token_aggregate_id
from tests.support.api import Api
from tests.support.cluster import ADMIN_TOKEN, LedgerCluster
from tests.support.git_repo import GitRepo

pytestmark = pytest.mark.e2e

WORKFLOW = "jobs:\n  - name: hello\n    run: echo hello from $LEDGERCI_JOB_NAME\n"
MiB = 1024 * 1024

# The cases are fixed by the seed and the examples per operation, with no time limit: how many
# are made must not depend on how busy the machine is (under `make test`'s load a 30 s budget made
# a fifth of them). This bounds only a hang (under the test timeout); alone it takes about 30 s.
FUZZ_TIMEOUT_SECONDS = 240
# A fixed seed: the same cases on every run, so a failure in CI is one that reproduces.
FUZZ_SEED = 20261128
# Real ids from a seeded run, drawn half of the time for the path parameters that name one, so the
# fuzzing reaches existing runs, jobs and tenants, not only 404s.
SCHEMATHESIS_CONFIG = """\
[dictionaries.runs]
values = ["{run_id}"]
[dictionaries.jobs]
values = ["{job_id}"]
[dictionaries.tenants]
values = ["{tenant_id}"]

[parameters]
"path.run_id" = {{ dictionary = "runs", probability = 0.5 }}
"path.job_id" = {{ dictionary = "jobs", probability = 0.5 }}
"path.tenant_id" = {{ dictionary = "tenants", probability = 0.5 }}

# A page's `cursor` is an opaque token the server issued; a schema cannot describe which strings
# are ones, so any other answers 422. Only for this operation, 422 counts as a fair refusal of a
# request the schema allows; every other check still applies to it.
[[operations]]
include-operation-id = "listRuns"
checks.positive_data_acceptance.expected-statuses = ["2XX", "401", "403", "404", "409", "422", "429"]

# Likewise a clone URL: that it is absolute, has a host, and (file://) names a directory on the
# ledgerci machine is checked by the gateway (domain/clone_url.py), not describable by a pattern.
[[operations]]
include-operation-id = "registerRepository"
checks.positive_data_acceptance.expected-statuses = ["2XX", "401", "403", "404", "409", "422", "429"]
"""


def finished_run(admin: Api, tmp_path: Path, name: str) -> dict[str, Any]:
    """A tenant of its own, a repository and one run that succeeded."""
    tenant_id, token = admin.tenant()
    repo = GitRepo(tmp_path / name)
    commit = repo.commit({".ledgerci.yml": WORKFLOW, "name.txt": name})
    repository_id = admin.repository(tenant_id, repo.clone_url)
    tenant = Api(admin.url, token)
    pushed = tenant.push(repository_id, commit)
    assert pushed.status_code == 202, pushed.text
    run = tenant.wait_run(pushed.json()["run_id"], timeout=60)
    assert run["status"] == "succeeded", tenant.explain(run["id"])
    return {"tenant": tenant_id, "token": token, "run": run, "api": tenant, "repository": repository_id}


def operations_in(schema: dict[str, Any]) -> int:
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    return sum(1 for item in schema["paths"].values() for method in item if method in methods)


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(
    tmp_path: Path, cluster: LedgerCluster, admin: Api
):
    seeded = finished_run(admin, tmp_path, "seeded")
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG.format(
        run_id=seeded["run"]["id"], job_id=seeded["run"]["jobs"][0]["id"], tenant_id=seeded["tenant"]))
    report = tmp_path / "schemathesis.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
        "run", f"{cluster.url}/schema/openapi.json",
        "--header", f"Authorization: Bearer {ADMIN_TOKEN}",
        "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", "30",
        "--seed", str(FUZZ_SEED),
        "--workers", "1",
        "--request-timeout", "10",
        "--generation-database", "none",
        "--report", "json", "--report-json-path", str(report),
    ]

    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=FUZZ_TIMEOUT_SECONDS)

    assert run.returncode == 0, f"schemathesis found problems:\n{run.stdout[-25000:]}\n{run.stderr[-5000:]}"
    summary = json.loads(report.read_text())
    schema = admin.http.get("/schema/openapi.json").json()
    # It ran, and reached every operation in every phase that can run (there are no examples).
    assert summary["operations"]["tested"] == summary["operations"]["total"] == operations_in(schema)
    assert summary["operations"]["errored"] == 0 and summary["errors"] == [] and summary["failures"] == []
    assert {phase: result["status"] for phase, result in summary["phases"].items()} == {
        "examples": "skip", "coverage": "success", "fuzzing": "success", "stateful": "success"}
    # Enough cases to mean something for every operation (the count grows with the API).
    assert summary["test_cases"]["generated"] >= 15 * operations_in(schema), summary["test_cases"]

    # Whatever it recorded poisoned nothing: a new tenant's push still runs, end to end.
    after = finished_run(admin, tmp_path, "after")
    assert after["api"].log(after["run"]["jobs"][0]["id"]).strip().endswith("hello from hello")


def test_an_oversized_body_is_refused_with_413_before_it_is_read(cluster: LedgerCluster, admin: Api):
    def two_mib() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming too
        for _ in range(32):
            yield b" " * (64 * 1024)

    for path in ("/api/v1/push", "/api/v1/tenants", "/api/v1/repositories"):
        for body in (b"{" + b" " * (2 * MiB) + b"}", two_mib()):
            response = admin.http.post(path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 413, (path, response.status_code, response.text[:500])
            answer = response.json()
            assert set(answer) == {"status_code", "detail"} and answer["status_code"] == 413, answer

    # Just under the limit the body is read, and judged on what it says.
    near = {"repository_id": "r", "commit": "0" * 40, "ref": "a" * (MiB - 200)}
    assert MiB - 1024 < len(json.dumps(near)) < MiB
    response = admin.http.post("/api/v1/push", json=near)
    assert response.status_code == 422, response.text[:500]
    assert "ref" in response.text
    assert httpx.get(f"{cluster.url}/healthz", timeout=10).status_code == 200


def test_values_the_store_cannot_hold_are_refused_at_the_door(tmp_path: Path, admin: Api):
    """A NUL was once accepted in a push's ref and a repository's clone URL. Stored, the event then
    stopped the projector (PostgreSQL text holds no NUL) and the scheduler (nor does a process's
    argument) for every tenant, for good. Now each such value is a 422, and so is every other
    malformed parameter that used to reach the store (a 503) or a conversion (a 500)."""
    seeded = finished_run(admin, tmp_path, "seeded")
    repository, run_id = seeded["repository"], seeded["run"]["id"]
    commit = seeded["run"]["commit"]

    refused = {
        "ref with NUL": admin.http.post("/api/v1/push", json={
            "repository_id": repository, "commit": commit, "ref": "refs/heads/a\x00b"}),
        "ref with a newline": admin.http.post("/api/v1/push", json={
            "repository_id": repository, "commit": commit, "ref": "refs/heads/a\nb"}),
        "clone URL with NUL": admin.http.post("/api/v1/repositories", json={
            "id": "nul-url", "tenant_id": seeded["tenant"], "clone_url": "file:///tmp/x\x00y"}),
        "tenant name with ESC": admin.http.post("/api/v1/tenants", json={"id": "esc-name", "name": "a\x1b[31m"}),
        "tenant rename with NUL": admin.http.patch(f"/api/v1/tenants/{seeded['tenant']}", json={"name": "a\x00"}),
        "status not a run status": admin.http.get("/api/v1/runs", params={"status": "a\x00b"}),
        "repository_id with NUL": admin.http.get("/api/v1/runs", params={"repository_id": "a\x00b"}),
        "cursor hiding a NUL": admin.http.get("/api/v1/runs", params={
            "cursor": base64.urlsafe_b64encode(b"2026-01-01T00:00:00Z|a\x00").decode()}),
        "as_of a superscript digit": admin.http.get(f"/api/v1/runs/{run_id}", params={"as_of": "\u00b2"}),
        "as_of of 5000 digits": admin.http.get(f"/api/v1/runs/{run_id}", params={"as_of": "9" * 5000}),
    }

    answers = {what: (response.status_code, response.json()) for what, response in refused.items()}
    assert {what: status for what, (status, _) in answers.items()} == dict.fromkeys(refused, 422), answers
    assert all(set(body) <= {"status_code", "detail", "extra"} for _, body in answers.values()), answers
    # Valid values still work, and the pipeline behind the gateway is whole.
    assert admin.http.get("/api/v1/runs", params={"status": "succeeded"}).status_code == 200
    assert admin.http.get(f"/api/v1/runs/{run_id}", params={"as_of": "1"}).json()["status"] == "queued"
    assert finished_run(admin, tmp_path, "after")["run"]["status"] == "succeeded"


def test_method_answers_list_every_method_of_the_path(admin: Api):
    # 405 lost its Allow header in the error handler; OPTIONS listed only the first handler's method.
    traced = admin.http.request("TRACE", "/api/v1/tenants/acme")
    assert traced.status_code == 405 and traced.json()["status_code"] == 405
    assert set(traced.headers["allow"].replace(" ", "").split(",")) == {"GET", "PATCH", "OPTIONS"}
    options = admin.http.options("/api/v1/tenants/acme")
    assert set(options.headers["allow"].replace(" ", "").split(",")) == {"GET", "PATCH", "OPTIONS"}


def test_an_almost_right_token_is_refused(admin: Api):
    _, token = admin.tenant()
    almost = {
        "admin, last character changed": ADMIN_TOKEN[:-1] + chr(ord(ADMIN_TOKEN[-1]) ^ 1),
        "admin, one character short": ADMIN_TOKEN[:-1],
        "admin, one character more": ADMIN_TOKEN + "x",
        "admin's first half": ADMIN_TOKEN[: len(ADMIN_TOKEN) // 2],
        "tenant, last character changed": token[:-1] + chr(ord(token[-1]) ^ 1),
        "tenant, one character short": token[:-1],
        "tenant's digest": hashlib.sha256(token.encode()).hexdigest(),
        "tenant's token id": str(token_aggregate_id(token)),
    }
    for what, wrong in almost.items():
        response = admin.as_token(wrong).get("/api/v1/runs")
        assert response.status_code == 401, (what, response.status_code)
        assert response.json()["status_code"] == 401
    assert admin.as_token(token).get("/api/v1/runs").status_code == 200
    basic = {"Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_TOKEN}".encode()).decode()}
    assert httpx.get(f"{admin.url}/api/v1/runs", headers=basic, timeout=10).status_code == 401
