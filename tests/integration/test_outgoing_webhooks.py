"""Outgoing webhooks on a real PostgreSQL: the projector queues one delivery per subscription
and occurrence it matches (filters by event, repository, branch and tenant; none for a deleted
subscription; none twice when the history is applied again), and the sender delivers them to a
real HTTP receiver signed as documented, retries a 500, gives up after its last attempt, sends
again on request with the same id, and refuses a private address unless allowed."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import NamedTuple
from uuid import UUID

import pytest

from commands.app import LedgerApp
from commands.outbound import Outbound
from commands.principal import Principal
from commands.secrets import SecretBook
from commands.subscriptions import Subscriptions
from commands.webhook_sender import MAX_ATTEMPTS, WebhookSender
from domain.messages import FinishJob, StartJob
from projections.runs import RunsProjection
from projections.sql import Database
from projections.webhook_outbox import CLAIM_SECONDS, WebhookOutbox
from sealing import Keyring
from tests.support.invariants import all_events, delivery_breaches
from tests.support.ledger import ADMIN, acme_ledger, read_model
from tests.support.receiver import Receiver, receiving

pytestmark = pytest.mark.integration

_commits = count(1)
WORKFLOW = b"name: build\njobs:\n  - name: compile\n    run: make\n"


class World(NamedTuple):
    ledger: LedgerApp
    db: Database
    subscriptions: Subscriptions
    outbox: WebhookOutbox

    def catch_up(self) -> None:
        RunsProjection(self.db).catch_up(lambda position: self.ledger.store.events_after(position, 500))

    def deliveries(self, subscription_id: str) -> list[tuple[str, str]]:
        """(event, run id) of each queued delivery, oldest first."""
        return [(row.event, row.run_id) for row in reversed(self.outbox.of_subscription(subscription_id, 500))]


@pytest.fixture
def world(postgres_url: str) -> Iterator[World]:
    with acme_ledger(postgres_url) as ledger, read_model(postgres_url) as db:
        ledger.registry.register_repository("api", tenant_id="acme", clone_url="file:///api", principal=ADMIN)
        ledger.registry.create_tenant("umbrella", name="Umbrella", weight=1, max_concurrent_jobs=4,
                                      max_queued_runs=100, pushes_per_minute=60, actor="admin")
        ledger.registry.register_repository("shop", tenant_id="umbrella", clone_url="file:///shop", principal=ADMIN)
        book = SecretBook(ledger, Keyring.from_setting(Keyring.generate_key()))
        yield World(ledger, db, Subscriptions(ledger, book), WebhookOutbox(db))


def ran(ledger: LedgerApp, repository_id: str, exit_code: int, ref: str = "refs/heads/main") -> str:
    """A one-job run pushed, planned, started and finished with `exit_code`."""
    run_id = ledger.runs.push(repository_id, f"{next(_commits):040x}", ref, ADMIN).run_id
    ledger.runs.plan_run(run_id, WORKFLOW)
    job = ledger.runs.load_run(run_id).jobs[0]
    claim = StartJob(run_id=str(run_id), job_id=str(job.id), attempt=1, runner_id="r1")
    assert ledger.runs.start_job(claim).reply.ok
    assert ledger.runs.finish_job(FinishJob(run_id=str(run_id), job_id=str(job.id), attempt=1, runner_id="r1",
                                            exit_code=exit_code)).reply.ok
    return str(run_id)


def subscribe(world: World, events: list[str], url: str = "https://hooks.example.com/ci", *,
              tenant: str = "acme", repository: str | None = None, branch: str | None = None) -> tuple[str, str]:
    subscription, secret = world.subscriptions.subscribe(tenant, url, events, repository, branch,
                                                         Principal(tenant, tenant))
    return str(subscription.id), secret


def test_each_occurrence_is_queued_once_for_each_subscription_that_takes_it(world: World) -> None:
    everything, _ = subscribe(world, ["*"])
    failures, _ = subscribe(world, ["run.failed", "job.failed"])
    web_release, _ = subscribe(world, ["run.*"], repository="web", branch="release")
    other_tenant, _ = subscribe(world, ["*"], tenant="umbrella")
    deleted, _ = subscribe(world, ["*"])
    world.subscriptions.delete("acme", world.subscriptions.get("acme", UUID(deleted), ADMIN).id, ADMIN)

    good = ran(world.ledger, "web", 0)
    bad = ran(world.ledger, "api", 3)
    release = ran(world.ledger, "web", 0, "refs/heads/release")
    world.catch_up()

    one_run = ["run.queued", "run.started", "job.started", "job.succeeded", "run.succeeded"]
    assert world.deliveries(everything) == [
        *[(event, good) for event in one_run],
        *[(event.replace("succeeded", "failed"), bad) for event in one_run],
        *[(event, release) for event in one_run]]
    assert world.deliveries(failures) == [("job.failed", bad), ("run.failed", bad)]
    assert world.deliveries(web_release) == [("run.queued", release), ("run.started", release),
                                             ("run.succeeded", release)]
    assert world.deliveries(other_tenant) == [] and world.deliveries(deleted) == []

    # The body is the run and job as they were when the event was applied.
    started = next(r for r in world.outbox.of_subscription(everything, 500) if r.event == "run.started"
                   and r.run_id == good)
    _, payload, _ = world.outbox.get(everything, started.id)
    assert '"status":"running"' in payload and '"tenant":"acme"' in payload

    # Applying the whole history again (a rebuild) queues nothing twice, and the checker agrees.
    before = len(world.outbox.of_subscription(everything, 500))
    RunsProjection(world.db).rebuild(world.ledger.store.history_pages())
    assert len(world.outbox.of_subscription(everything, 500)) == before
    assert delivery_breaches(all_events(world.ledger), world.db) == []


def test_the_checker_sees_a_delivery_missing_or_made_up(world: World) -> None:
    subscription, _ = subscribe(world, ["run.succeeded"])
    ran(world.ledger, "web", 0)
    world.catch_up()
    (row,) = world.outbox.of_subscription(subscription, 10)
    with world.db.transaction() as cursor:
        cursor.execute("UPDATE lci_webhook_deliveries SET id = 'made-up' WHERE id = ?", (row.id,))
    assert sorted(delivery_breaches(all_events(world.ledger), world.db)) == [
        f"webhook delivery {row.id} never queued",
        "webhook delivery made-up queued for no occurrence a live subscription matched"]


class Clock:
    """The sender's clock, moved on by the test past each retry's wait."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def later(self) -> None:
        self.now += timedelta(days=1)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as receiver:
        yield receiver


def sender(world: World, clock: Clock, *, allow_private: bool = True) -> WebhookSender:
    return WebhookSender(world.outbox, world.subscriptions, Outbound(allow_private=allow_private), clock,
                         "https://ci.example.com", retry_seconds=1)


async def test_signed_retried_given_up_and_redelivered_with_the_same_id(world: World, receiver: Receiver) -> None:
    subscription, secret = subscribe(world, ["run.succeeded"], receiver.url + "/hook")
    run_id = ran(world.ledger, "web", 0)
    world.catch_up()
    clock = Clock()
    webhooks = sender(world, clock)

    receiver.failures_left = 2  # two 500s, then 201
    for _ in range(3):
        await webhooks.send_due()
        clock.later()
    (got,) = receiver.received
    assert got.path == "/hook" and got.headers["X-Ledgerci-Event"] == "run.succeeded"
    parts = dict(part.split("=", 1) for part in got.headers["X-Ledgerci-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + got.raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    body = got.body
    assert body["event"] == "run.succeeded" and body["delivery_id"] == got.headers["X-Ledgerci-Delivery"]
    assert body["run"]["id"] == run_id and body["run"]["status"] == "succeeded" and body["job"] is None
    assert body["run"]["url"] == f"https://ci.example.com/#/runs/{run_id}" and body["delivered_at"]
    _, _, attempts = world.outbox.get(subscription, got.headers["X-Ledgerci-Delivery"])
    assert [a.status_code for a in attempts] == [500, 500, 201]

    # A receiver that never takes it: tried MAX_ATTEMPTS times, then left for a redelivery.
    receiver.failures_left = 10_000
    ran(world.ledger, "web", 0)
    world.catch_up()
    for _ in range(MAX_ATTEMPTS + 2):
        await webhooks.send_due()
        clock.later()
    (given_up,) = [row for row in world.outbox.of_subscription(subscription, 10) if row.delivered_at is None]
    assert given_up.attempts == MAX_ATTEMPTS and given_up.next_at is None and given_up.last_status == 500

    receiver.failures_left = 0
    assert world.outbox.redeliver(subscription, given_up.id, clock())
    await webhooks.send_due()
    assert [r.headers["X-Ledgerci-Delivery"] for r in receiver.received] == [got.headers["X-Ledgerci-Delivery"],
                                                                           given_up.id]
    # And a delivered one again, on request: the same id, a receiver can tell it is a repeat.
    assert world.outbox.redeliver(subscription, given_up.id, clock())
    await webhooks.send_due()
    assert [r.headers["X-Ledgerci-Delivery"] for r in receiver.received][-2:] == [given_up.id, given_up.id]
    await webhooks.outbound.close()


async def test_a_private_address_is_refused_unless_allowed(world: World, receiver: Receiver) -> None:
    subscription, _ = subscribe(world, ["run.succeeded"], receiver.url)
    ran(world.ledger, "web", 0)
    world.catch_up()
    webhooks = sender(world, Clock(), allow_private=False)
    await webhooks.send_due()
    (row,) = world.outbox.of_subscription(subscription, 10)
    assert row.last_result.startswith("refused: 127.0.0.1 is a private address") and row.delivered_at is None
    assert receiver.received == []
    await webhooks.outbound.close()


async def test_a_redirect_is_never_followed_and_counts_as_not_delivered(world: World, receiver: Receiver) -> None:
    with receiving() as inside:  # where a redirect would lead: a server the tenant must not reach
        subscription, _ = subscribe(world, ["run.succeeded"], receiver.url)
        receiver.redirect_to = f"{inside.url}/internal"
        ran(world.ledger, "web", 0)
        world.catch_up()
        webhooks = sender(world, Clock())
        await webhooks.send_due()
        (row,) = world.outbox.of_subscription(subscription, 10)
        assert (row.last_result, row.delivered_at, row.attempts) == ("HTTP 307", None, 1)
        assert inside.received == [] and receiver.received == []
        await webhooks.outbound.close()


async def test_a_deleted_subscription_is_sent_nothing_more(world: World, receiver: Receiver) -> None:
    subscription, _ = subscribe(world, ["run.succeeded"], receiver.url)
    ran(world.ledger, "web", 0)
    world.catch_up()
    world.subscriptions.delete("acme", UUID(subscription), ADMIN)
    webhooks = sender(world, Clock())
    await webhooks.send_due()
    assert receiver.received == []
    assert world.outbox.of_subscription(subscription, 10)[0].last_result == "not sent: the subscription was deleted"
    await webhooks.outbound.close()


def test_another_tenants_subscription_is_not_found(world: World) -> None:
    subscription, _ = subscribe(world, ["*"])
    umbrella = Principal("umbrella", "umbrella")
    with pytest.raises(Exception, match="no webhook subscription"):
        world.subscriptions.get("acme", UUID(subscription), umbrella)
    with pytest.raises(Exception, match="no webhook subscription"):
        world.subscriptions.get("umbrella", UUID(subscription), umbrella)
    with pytest.raises(Exception, match="not found"):
        world.subscriptions.subscribe("umbrella", "https://x.example/", ["*"], "web", None, umbrella)


def test_senders_asking_at_once_are_given_different_deliveries_until_their_claims_run_out(world: World) -> None:
    subscribe(world, ["*"])
    ran(world.ledger, "web", 0)
    world.catch_up()
    now = datetime.now(UTC) + timedelta(seconds=1)
    with ThreadPoolExecutor(4) as pool:
        claimed = list(pool.map(lambda _: world.outbox.due(now, limit=2), range(4)))
    ids = [row.id for rows in claimed for row in rows]
    assert ids and len(ids) == len(set(ids))  # each delivery to one sender at most
    while rows := world.outbox.due(now, limit=2):  # the rest, to whoever asks next
        ids += [row.id for row in rows]
    assert len(ids) == len(set(ids)) == 5  # the run's five deliveries, each claimed once
    assert len(world.outbox.due(now + timedelta(seconds=CLAIM_SECONDS + 1))) == 5  # a dead sender's come back


async def test_an_address_no_resolver_or_client_takes_is_an_attempt_that_failed_not_a_crash() -> None:
    outbound = Outbound(allow_private=False)
    for url in ("http://a..example.com/", "http://example.com:99999/", "http://./"):
        outcome = await outbound.post(url, {}, content=b"{}")
        assert not outcome.ok and outcome.result.startswith("error: "), (url, outcome)
    await outbound.close()
