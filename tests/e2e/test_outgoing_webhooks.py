"""Outgoing webhooks (issue 21), end to end: a small real HTTP server in the test receives a
tenant's subscriptions. Every delivery verifies with the documented recipe; a failure-only
subscription gets nothing for a successful run; deliveries the receiver refused arrive after it
recovers, also when the sender (in the projector process) is SIGKILLed meanwhile, each id at
least once and none that the history does not call for (the invariant checker); a redelivery
comes with the same id; a receiver on a private address is refused by default. Every service a
process of its own on PostgreSQL and a real nats-server."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_faults import assert_invariants, wait_for
from tests.support.api import Api
from tests.support.cluster import ADMIN_TOKEN, LedgerCluster
from tests.support.git_repo import GitRepo
from tests.support.receiver import Received, Receiver, receiving

pytestmark = pytest.mark.e2e

GOOD = "name: build\njobs:\n  - name: compile\n    run: echo compiled\n"
BAD = "name: build\njobs:\n  - name: compile\n    run: exit 3\n"
ONE_RUN = ["run.queued", "run.started", "job.started", "job.succeeded", "run.succeeded"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as receiver:
        yield receiver


class Tenant:
    def __init__(self, admin: Api, tmp_path: Path) -> None:
        self.id, token = admin.tenant()
        self.api = Api(admin.url, token)
        self.repo = GitRepo(tmp_path / f"repo-{self.id}")
        self.repository_id = admin.repository(self.id, self.repo.clone_url)
        self.pushed = 0

    def subscribe(self, url: str, events: list[str], **narrowed: str) -> tuple[str, str]:
        made = self.api.http.post(f"/api/v1/tenants/{self.id}/webhooks",
                                  json={"url": url, "events": events, **narrowed})
        assert made.status_code == 201, made.text
        assert made.json()["secret"] not in self.api.http.get(f"/api/v1/tenants/{self.id}/webhooks").text
        return made.json()["subscription"]["id"], made.json()["secret"]

    def run(self, workflow: str, repository_id: str | None = None, branch: str = "main") -> str:
        self.pushed += 1
        commit = self.repo.commit({".ledgerci.yml": workflow, "n": str(self.pushed)})
        return self.api.push(repository_id or self.repository_id, commit, f"refs/heads/{branch}").json()["run_id"]

    def log(self, subscription_id: str) -> list[dict]:
        answer = self.api.http.get(f"/api/v1/tenants/{self.id}/webhooks/{subscription_id}/deliveries",
                                   params={"limit": 500})
        assert answer.status_code == 200, answer.text
        return answer.json()["deliveries"]


def verified(got: Received, secret: str) -> dict:
    """The body, once its signature checks out by docs/api.md's recipe."""
    parts = dict(part.split("=", 1) for part in got.headers["X-Ledgerci-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + got.raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected), got
    assert abs(time.time() - int(parts["t"])) < 300  # what a receiver refuses beyond: a replay
    return got.body


def test_signed_deliveries_and_a_failure_only_subscription_that_hears_of_failures_only(
        tmp_path: Path, allowing: LedgerCluster, receiver: Receiver) -> None:
    admin = Api(allowing.url, ADMIN_TOKEN)
    tenant = Tenant(admin, tmp_path)
    everything, everything_secret = tenant.subscribe(f"{receiver.url}/all", ["run.*", "job.*"])
    _, failures_secret = tenant.subscribe(f"{receiver.url}/failures", ["*.failed"])
    other_repository = admin.repository(tenant.id, tenant.repo.clone_url)  # the same git, another repository
    of_other, _ = tenant.subscribe(f"{receiver.url}/other", ["run.succeeded"], repository_id=other_repository)
    of_release, _ = tenant.subscribe(f"{receiver.url}/release", ["run.succeeded"], branch="release")

    good = tenant.run(GOOD)
    assert admin.wait_run(good)["status"] == "succeeded"
    bad = tenant.run(BAD)
    assert admin.wait_run(bad)["status"] == "failed"
    wait_for(lambda: sum(r.path == "/all" for r in receiver.received) >= 10, 30, "ten deliveries")

    got = {r.headers["X-Ledgerci-Delivery"]: r for r in receiver.received}  # a repeat is the same id
    for_all = [verified(r, everything_secret) for r in got.values() if r.path == "/all"]
    assert sorted((b["run"]["id"], b["event"]) for b in for_all) == sorted(
        [(good, event) for event in ONE_RUN] + [(bad, event.replace("succeeded", "failed")) for event in ONE_RUN])
    ended = next(b for b in for_all if b["event"] == "job.failed")
    assert ended["job"]["exit_code"] == 3 and ended["job"]["name"] == "compile" and ended["tenant"] == tenant.id
    assert ended["run"]["url"].endswith(f"/#/runs/{bad}") and ended["delivered_at"]

    wait_for(lambda: sum(r.path == "/failures" for r in receiver.received) >= 2, 30, "the failures")
    for_failures = [verified(r, failures_secret) for r in receiver.received if r.path == "/failures"]
    assert sorted((b["run"]["id"], b["event"]) for b in for_failures) == [(bad, "job.failed"), (bad, "run.failed")]

    log = tenant.log(everything)
    assert {row["id"] for row in log} == {k for k, r in got.items() if r.path == "/all"}
    assert all(row["last_status"] == 201 and row["delivered_at"] for row in log)

    # Narrowed to another repository, or to one branch: nothing queued for the runs above (a
    # delivery is queued in the transaction that projects its event, so the log is complete).
    assert tenant.log(of_other) == [] and tenant.log(of_release) == []
    released = tenant.run(GOOD, other_repository, "release")
    assert admin.wait_run(released)["status"] == "succeeded"
    wait_for(lambda: {r.path for r in receiver.received} >= {"/other", "/release"}, 30, "the narrowed deliveries")
    for path in ("/other", "/release"):
        assert {r.body["run"]["id"] for r in receiver.received if r.path == path} == {released}
    elsewhere = tenant.run(GOOD, other_repository, "feature")
    assert admin.wait_run(elsewhere)["status"] == "succeeded"
    wait_for(lambda: len(tenant.log(of_other)) == 2, 30, "the other repository's second run")
    assert [row["event"] for row in tenant.log(of_release)] == ["run.succeeded"]  # not the feature branch's
    assert_invariants(allowing)


def test_deliveries_arrive_after_the_receiver_recovers_and_the_sender_is_killed(
        tmp_path: Path, allowing: LedgerCluster, receiver: Receiver) -> None:
    admin = Api(allowing.url, ADMIN_TOKEN)
    tenant = Tenant(admin, tmp_path)
    subscription, secret = tenant.subscribe(f"{receiver.url}/hook", ["run.*"])

    # The receiver is down while runs go by; the sender is SIGKILLed with deliveries unsent.
    receiver.failures_left = 10_000
    runs = [tenant.run(GOOD if i % 2 else BAD) for i in range(6)]
    for run_id in runs:
        admin.wait_run(run_id)
    # Killed once every delivery is queued and the receiver has refused some: waiting for each
    # to be refused would let the first ones' waits double past half a minute (a receiver that
    # fails gets one attempt per pass, docs/api.md "Retries").
    wait_for(lambda: len(tenant.log(subscription)) == 18 and any(row["attempts"] >= 1
                                                                  for row in tenant.log(subscription)),
             60, "every delivery to be queued and some refused")
    assert not any(row["delivered_at"] for row in tenant.log(subscription))
    allowing.kill("projector")
    receiver.failures_left = 0
    allowing.start("projector")
    wait_for(lambda: all(row["delivered_at"] for row in tenant.log(subscription)), 60, "every delivery")
    delivered = {r.headers["X-Ledgerci-Delivery"]: verified(r, secret) for r in receiver.received}
    assert set(delivered) == {row["id"] for row in tenant.log(subscription)}
    assert sorted((b["run"]["id"], b["event"].split(".")[1]) for b in delivered.values()) == sorted(
        (run_id, state) for run_id in runs for state in ("queued", "started", "succeeded" if runs.index(run_id) % 2
                                                         else "failed"))
    refused = next(row for row in tenant.log(subscription) if row["attempts"] >= 2)  # refused, then delivered
    detail = tenant.api.http.get(f"/api/v1/tenants/{tenant.id}/webhooks/{subscription}/deliveries/{refused['id']}")
    assert [a["status_code"] for a in detail.json()["attempts"]][-1] == 201
    assert 500 in [a["status_code"] for a in detail.json()["attempts"]]

    # A redelivery on request: the same id again.
    again = tenant.api.http.post(f"/api/v1/tenants/{tenant.id}/webhooks/{subscription}/deliveries/"
                                 f"{refused['id']}/redeliver")
    assert again.status_code == 202, again.text
    wait_for(lambda: [r.headers["X-Ledgerci-Delivery"] for r in receiver.received].count(refused["id"]) >= 2,
             30, "the redelivery")
    assert_invariants(allowing)


def test_a_receiver_on_a_private_address_is_refused_by_default_and_bad_input_is_named(
        tmp_path: Path, cluster: LedgerCluster, receiver: Receiver) -> None:
    admin = Api(cluster.url, ADMIN_TOKEN)
    tenant = Tenant(admin, tmp_path)
    subscription, _ = tenant.subscribe(receiver.url, ["run.succeeded"])
    assert admin.wait_run(tenant.run(GOOD))["status"] == "succeeded"
    wait_for(lambda: any((row["last_result"] or "").startswith("refused: 127.0.0.1 is a private address")
                         for row in tenant.log(subscription)), 30, "the private receiver to be refused")
    assert receiver.received == []

    for body, named in [({"url": receiver.url, "events": ["run.exploded"]}, "run.exploded"),
                        ({"url": "ftp://example.com/", "events": ["*"]}, "url"),
                        ({"url": receiver.url, "events": []}, "events"),
                        ({"url": receiver.url, "events": ["*"], "repository_id": "not-theirs"}, "not-theirs")]:
        answer = tenant.api.http.post(f"/api/v1/tenants/{tenant.id}/webhooks", json=body)
        assert answer.status_code in (404, 422) and named in answer.text, (body, answer.status_code, answer.text)
    deleted = tenant.api.http.delete(f"/api/v1/tenants/{tenant.id}/webhooks/{subscription}")
    assert deleted.status_code == 204
    # The list is the read model's (docs/api.md "Conventions"): the deletion shows once the
    # projector has applied it, milliseconds later; one subscription's own route is current at once.
    assert tenant.api.http.get(f"/api/v1/tenants/{tenant.id}/webhooks/{subscription}").status_code == 404
    wait_for(lambda: tenant.api.http.get(f"/api/v1/tenants/{tenant.id}/webhooks").json()["subscriptions"] == [],
             10, "the deleted subscription to leave the list")
