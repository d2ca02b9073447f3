"""Webhook intake (issue 21) end to end: real push payloads from each host's documentation
(tests/fixtures/webhooks/, with where each was taken from), signed as the host signs them, to
gateways of their own processes on PostgreSQL and a real nats-server. A correctly signed push
starts a run; a wrong signature, one made with a rotated-away secret, an unknown repository, a
malformed body and a delivery for another repository each get their 4xx and start nothing; the
same delivery twice, and 20 concurrent deliveries of one push to two gateways, make one run; a
tag of a commit a branch built is a run of its own; a deleted tag and a ping start nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_cli import Cli
from tests.e2e.test_faults import assert_invariants
from tests.support.api import Api
from tests.support.cluster import LedgerCluster
from tests.support.git_repo import GitRepo

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).parents[1] / "fixtures" / "webhooks"
SECRET = "the-webhook-secret-of-web"
WORKFLOW = "jobs:\n  - name: build\n    run: echo built\n"
TAGGED_WORKFLOW = "on:\n  branches: [main, 'refs/tags/v*']\n" + WORKFLOW


def fixture(host: str, event: str = "push") -> dict[str, Any]:
    return json.loads((FIXTURES / f"{host}_{event}.json").read_text())


def host_name(host: str, body: dict[str, Any]) -> str:
    return body["project"]["path_with_namespace"] if host == "gitlab" else body["repository"]["full_name"]


def delivery(host: str, commit: str, *, secret: str = SECRET, delivery_id: str = "delivery-1",
             ref: str | None = "refs/heads/main", after: str | None = None,
             event: str = "push") -> tuple[dict[str, str], bytes]:
    """The host's documented `event` (a fixture), signed as the host signs it; a push is made to
    point at `commit` and `ref` (`ref=None`: the fixture's body as it was recorded)."""
    recorded = fixture(host, event)
    body = recorded["body"]
    if ref is not None:  # of the repository the push fixture names, as `Hooked` set it up
        named_by = "project" if host == "gitlab" else "repository"
        body = dict(body, ref=ref, after=after or commit, **{named_by: fixture(host)["body"][named_by]})
        if body.get("head_commit"):  # the commit a tag's push names (domain/webhooks.py)
            body["head_commit"] = dict(body["head_commit"], id=after or commit)
        if body.get("checkout_sha"):
            body["checkout_sha"] = after or commit
    raw = json.dumps(body).encode()
    headers = {k: v for k, v in recorded["headers"].items()
               if k.lower() not in ("x-hub-signature-256", "x-hub-signature", "x-gitea-signature", "x-gitlab-token",
                                    "x-github-delivery", "x-gitea-delivery", "x-gitlab-event-uuid", "idempotency-key",
                                    "content-length")}
    digest = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    headers |= {"github": {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Delivery": delivery_id},
                "gitea": {"X-Gitea-Signature": digest, "X-Gitea-Delivery": delivery_id},
                "gitlab": {"X-Gitlab-Token": secret, "X-Gitlab-Event-UUID": delivery_id}}[host]
    return headers | {"Content-Type": "application/json"}, raw


class Hooked:
    """A repository of a new tenant with a webhook secret, and a commit to push."""

    def __init__(self, admin: Api, tmp_path: Path, host: str, workflow: str = WORKFLOW) -> None:
        self.admin, self.host = admin, host
        repo = GitRepo(tmp_path / f"repo-{host}")
        self.commit = repo.commit({".ledgerci.yml": workflow})
        tenant_id, token = admin.tenant()
        self.owner = Api(admin.url, token)
        self.repository_id = admin.repository(tenant_id, repo.clone_url)
        answer = self.owner.http.put(f"/api/v1/repositories/{self.repository_id}/webhook",
                                     json={"secret": SECRET, "host_name": host_name(host, fixture(host)["body"])})
        assert answer.status_code == 200, answer.text
        assert "secret" not in answer.json()
        self.path = answer.json()["paths"][host]

    def deliver(self, url: str | None = None, **kwargs: Any) -> httpx.Response:
        headers, raw = delivery(self.host, self.commit, **kwargs)
        return httpx.post(f"{url or self.admin.url}{self.path}", content=raw, headers=headers, timeout=30)

    def runs(self) -> list[dict[str, Any]]:
        return self.owner.http.get("/api/v1/runs", params={"repository_id": self.repository_id}).json()["runs"]


@pytest.mark.parametrize("host", ["github", "gitea", "gitlab"])
def test_a_signed_push_starts_a_run_and_the_same_delivery_again_gives_the_same_run(
        tmp_path: Path, cluster: LedgerCluster, admin: Api, host: str) -> None:
    hooked = Hooked(admin, tmp_path, host)
    answer = hooked.deliver()
    assert answer.status_code == 202, answer.text
    run_id = answer.json()["run_id"]
    assert answer.json()["delivery_id"] == "delivery-1"
    run = admin.wait_run(run_id)
    assert run["status"] == "succeeded" and run["commit"] == hooked.commit and run["ref"] == "refs/heads/main"
    again = hooked.deliver()
    assert (again.status_code, again.json()["run_id"], again.json()["duplicate"]) == (200, run_id, True)
    requested = admin.events(run_id)[0]
    assert requested["type"] == "RunRequested" and requested["actor"] == f"webhook:{host} delivery delivery-1"

    deleted = hooked.deliver(ref="refs/heads/gone", after="0" * 40, delivery_id="delivery-2")
    assert deleted.status_code == 200 and deleted.json()["ignored"] == "refs/heads/gone was deleted: nothing to run"
    assert [r["id"] for r in hooked.runs()] == [run_id]


@pytest.mark.parametrize("host", ["github", "gitlab"])
def test_a_tag_of_a_built_commit_is_a_run_of_its_own_and_a_deleted_tag_or_a_ping_starts_nothing(
        tmp_path: Path, admin: Api, host: str) -> None:
    """Tagging a commit a branch already built is how a release starts: the tag's push is its own
    run (the branch's run cannot stand for it), and `on.branches` decides whether it runs."""
    hooked = Hooked(admin, tmp_path, host, TAGGED_WORKFLOW)
    branch_run = hooked.deliver().json()["run_id"]
    assert admin.wait_run(branch_run)["status"] == "succeeded"

    event = "tag_push" if host == "gitlab" else "push"  # GitHub sends a tag's push as a push
    tagged = hooked.deliver(event=event, ref="refs/tags/v1.0.0", delivery_id="tag-1")
    assert tagged.status_code == 202, tagged.text
    tag_run = tagged.json()["run_id"]
    assert tag_run != branch_run
    run = admin.wait_run(tag_run)
    assert (run["status"], run["ref"], run["commit"]) == ("succeeded", "refs/tags/v1.0.0", hooked.commit)
    again = hooked.deliver(event=event, ref="refs/tags/v1.0.0", delivery_id="tag-1")
    assert (again.status_code, again.json()["run_id"]) == (200, tag_run)
    rerun = admin.http.post(f"/api/v1/runs/{tag_run}/rerun")
    assert rerun.status_code == 202, rerun.text
    assert admin.wait_run(rerun.json()["run_id"])["ref"] == "refs/tags/v1.0.0"

    other_tag = hooked.deliver(event=event, ref="refs/tags/nightly", delivery_id="tag-2").json()["run_id"]
    assert admin.wait_run(other_tag)["status"] == "skipped"  # not in on.branches

    if host == "github":  # the documented deletion of a tag and ping, as recorded
        headers, raw = delivery(host, hooked.commit, ref=None, event="push_tag_delete", delivery_id="del-1")
        deleted = httpx.post(f"{admin.url}{hooked.path}", content=raw, headers=headers)
        assert deleted.status_code == 200 and "was deleted" in deleted.json()["ignored"], deleted.text
        headers, raw = delivery(host, hooked.commit, ref=None, event="ping", delivery_id="ping-1")
        ping = httpx.post(f"{admin.url}{hooked.path}", content=raw, headers=headers)
        assert ping.status_code == 200 and ping.json()["ignored"] == "ping event: only pushes start runs"
    assert len(hooked.runs()) == 4


def test_bad_deliveries_get_their_4xx_and_start_nothing(tmp_path: Path, cluster: LedgerCluster, admin: Api) -> None:
    hooked = Hooked(admin, tmp_path, "github")
    wrong = hooked.deliver(secret="not-the-secret-of-this-repository")
    assert wrong.status_code == 401, wrong.text
    assert "signature does not match" in wrong.json()["detail"]
    headers, raw = delivery("github", hooked.commit)
    unsigned = httpx.post(f"{admin.url}{hooked.path}", content=raw,
                          headers={k: v for k, v in headers.items() if k != "X-Hub-Signature-256"})
    assert unsigned.status_code == 401

    # The secret is rotated: a delivery signed with the old one (a replay) is refused.
    signed_before = delivery("github", hooked.commit)
    rotated = hooked.owner.http.put(f"/api/v1/repositories/{hooked.repository_id}/webhook",
                                    json={"secret": "the-new-webhook-secret",
                                          "host_name": host_name("github", fixture("github")["body"])})
    assert rotated.status_code == 200, rotated.text
    replayed = httpx.post(f"{admin.url}{hooked.path}", content=signed_before[1], headers=signed_before[0])
    assert replayed.status_code == 401
    hooked.owner.http.put(f"/api/v1/repositories/{hooked.repository_id}/webhook",
                          json={"secret": SECRET, "host_name": host_name("github", fixture("github")["body"])})

    unknown = httpx.post(f"{admin.url}/api/v1/hooks/github/no-such-repository", content=raw, headers=headers)
    assert unknown.status_code == 404 and "no webhook is configured" in unknown.json()["detail"]
    unknown_host = httpx.post(f"{admin.url}/api/v1/hooks/bitbucket/{hooked.repository_id}", content=raw,
                              headers=headers)
    assert 400 <= unknown_host.status_code < 500

    malformed = b'{"ref": "refs/heads/main", "after": '
    digest = hmac.new(SECRET.encode(), malformed, hashlib.sha256).hexdigest()
    broken = httpx.post(f"{admin.url}{hooked.path}", content=malformed,
                        headers={**headers, "X-Hub-Signature-256": f"sha256={digest}"})
    assert broken.status_code == 422 and "not a github push event" in broken.json()["detail"], broken.text

    other = json.dumps(dict(json.loads(raw), repository={"full_name": "someone/else"})).encode()
    digest = hmac.new(SECRET.encode(), other, hashlib.sha256).hexdigest()
    elsewhere = httpx.post(f"{admin.url}{hooked.path}", content=other,
                           headers={**headers, "X-Hub-Signature-256": f"sha256={digest}"})
    assert elsewhere.status_code == 422 and "someone/else" in elsewhere.json()["detail"], elsewhere.text

    ping = httpx.post(f"{admin.url}{hooked.path}", content=b"{}",
                      headers={"X-GitHub-Event": "ping", "X-GitHub-Delivery": "p-1", "X-Hub-Signature-256":
                               "sha256=" + hmac.new(SECRET.encode(), b"{}", hashlib.sha256).hexdigest()})
    assert ping.status_code == 200 and ping.json()["ignored"] == "ping event: only pushes start runs"
    assert hooked.runs() == []


def test_twenty_concurrent_deliveries_of_one_push_to_two_gateways_make_one_run(
        tmp_path: Path, cluster: LedgerCluster, admin: Api) -> None:
    cluster.start("gateway#2")
    cluster.wait_ready("gateway#2")
    hooked = Hooked(admin, tmp_path, "gitea")
    urls = [cluster.gateway_url("gateway"), cluster.gateway_url("gateway#2")]
    barrier = threading.Barrier(20)

    def deliver(index: int) -> httpx.Response:
        barrier.wait()
        return hooked.deliver(urls[index % 2], delivery_id=f"retry-{index % 3}")

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(deliver, range(20)))
    assert all(a.status_code in (200, 202) for a in answers), [a.text for a in answers if a.status_code >= 300]
    assert len({a.json()["run_id"] for a in answers}) == 1
    assert sum(a.status_code == 202 for a in answers) == 1
    assert admin.wait_run(answers[0].json()["run_id"])["status"] == "succeeded"
    assert len(hooked.runs()) == 1

    # The command line sets the secret (from standard input) and removes the webhook.
    cli = Cli(admin.url, hooked.owner.token, tmp_path)
    shown = cli("repo", "webhook", hooked.repository_id, "--host-name", "org/app", stdin="a-secret-from-stdin-1")
    assert shown.returncode == 0 and f"/api/v1/hooks/gitlab/{hooked.repository_id}" in shown.stdout, shown
    removed = cli("repo", "webhook", hooked.repository_id, "--remove")
    assert removed.returncode == 0, removed.stderr
    assert hooked.deliver(delivery_id="after-removal").status_code == 404
    assert_invariants(cluster)
