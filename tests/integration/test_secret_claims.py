"""A claim's reply carries the job's secrets sealed to the claiming runner's key, and only then.

The write side on the real PostgreSQL store; the runner's end of the box is the runner's own
code (runner.secrets). No NATS: the command service's hook is called as it calls it.
"""

from __future__ import annotations

from collections.abc import Iterator
from uuid import UUID

import msgspec
import pytest

from commands.app import LedgerApp
from commands.dispatch import ready_dispatch
from commands.secrets import SecretBook
from domain.messages import FinishJob, JobDispatch, StartJob
from domain.secrets import Scope
from runner.secrets import JobSecrets, open_secrets
from sealing import Keyring, Recipient
from tests.support.ledger import ADMIN, acme_ledger

pytestmark = pytest.mark.integration

WORKFLOW = b"""jobs:
  - name: deploy
    run: ./deploy.sh
    secrets: [TOKEN, SHARED]
  - name: plain
    run: make
"""


@pytest.fixture
def ledger(postgres_url: str) -> Iterator[LedgerApp]:
    with acme_ledger(postgres_url) as app:
        yield app


@pytest.fixture
def book(ledger: LedgerApp) -> SecretBook:
    book = SecretBook(ledger, Keyring.from_setting(Keyring.generate_key()))
    book.set(Scope.TENANT, "acme", "SHARED", "tenant-shared", ADMIN)
    book.set(Scope.REPOSITORY, "web", "SHARED", "repository-shared", ADMIN)
    book.set(Scope.REPOSITORY, "web", "TOKEN", "the-token", ADMIN)
    return book


def queued(ledger: LedgerApp) -> tuple[UUID, str, int]:
    """A run whose first job, which lists secrets, is queued: (run, job, attempt)."""
    run_id = ledger.runs.push("web", "a" * 40, "refs/heads/main", ADMIN).run_id
    ledger.runs.plan_run(run_id, WORKFLOW)
    job = ledger.runs.get_run(run_id, ADMIN).jobs[0]
    return run_id, str(job.id), job.attempt


def claim(ledger: LedgerApp, book: SecretBook, run_id: UUID, job_id: str, attempt: int, runner: str,
          recipient: Recipient | None) -> tuple[bool, JobSecrets]:
    """What the command service answers to a runner's claim, as the runner opens it."""
    command = StartJob(run_id=str(run_id), job_id=job_id, attempt=attempt, runner_id=runner,
                       seal_to=recipient.public_key if recipient else None)
    reply = book.seal_for_claim(command, ledger.runs.start_job(command)).reply
    return reply.ok, open_secrets(reply, recipient, job_id, attempt)


def test_the_claiming_runner_opens_the_secrets_the_job_lists_and_nobody_else_gets_them(
    ledger: LedgerApp, book: SecretBook
) -> None:
    run_id, job_id, attempt = queued(ledger)
    runner = Recipient()
    ok, secrets = claim(ledger, book, run_id, job_id, attempt, "runner-1", runner)
    assert ok and secrets == JobSecrets({"TOKEN": "the-token", "SHARED": "repository-shared"})
    # Its reply lost, the same runner claims again with a new key: sealed again, to that key.
    ok, again = claim(ledger, book, run_id, job_id, attempt, "runner-1", Recipient())
    assert ok and again.values == secrets.values
    # Another runner's claim of the attempt is refused, and carries nothing.
    command = StartJob(run_id=str(run_id), job_id=job_id, attempt=attempt, runner_id="runner-2",
                       seal_to=Recipient().public_key)
    reply = book.seal_for_claim(command, ledger.runs.start_job(command)).reply
    assert reply.refused and reply.secrets is None and reply.secrets_error is None


def test_a_job_that_lists_no_secret_gets_none_and_its_runner_sends_no_key(ledger: LedgerApp, book: SecretBook) -> None:
    run_id, job_id, attempt = queued(ledger)
    dispatch = ready_dispatch(ledger.runs.load_run(run_id))
    assert dispatch is not None and dispatch.lists_secrets  # its runner makes a key pair for the claim
    claim(ledger, book, run_id, job_id, attempt, "runner-1", Recipient())
    ledger.runs.finish_job(FinishJob(run_id=str(run_id), job_id=job_id, attempt=attempt, runner_id="runner-1",
                                exit_code=0))
    plain = ledger.runs.get_run(run_id, ADMIN).jobs[1]
    dispatch = ready_dispatch(ledger.runs.load_run(run_id))
    assert dispatch is not None and dispatch.job_id == str(plain.id) and not dispatch.lists_secrets
    ok, secrets = claim(ledger, book, run_id, str(plain.id), plain.attempt, "runner-1", None)  # as runner/agent.py
    assert ok and secrets == JobSecrets({})
    # A dispatch offered before `lists_secrets` existed reads as listing secrets: a key is sent.
    older = msgspec.structs.asdict(dispatch)
    del older["lists_secrets"]
    assert msgspec.json.decode(msgspec.json.encode(older), type=JobDispatch).lists_secrets


@pytest.mark.parametrize("why", ["deleted", "no key sent", "no keyring", "another key", "too large"])
def test_a_job_whose_secrets_cannot_be_given_is_told_why(ledger: LedgerApp, book: SecretBook, why: str) -> None:
    run_id, job_id, attempt = queued(ledger)
    recipient: Recipient | None = Recipient()
    expected = {
        "deleted": "secret TOKEN not set for repository web or tenant acme",
        "no key sent": "this runner sent no key to seal secrets to",
        "no keyring": "LEDGERCI_SECRET_KEY is not set",
        "another key": "encrypted with key",
        "too large": "over the 524288 a claim carries",
    }[why]
    if why == "deleted":
        book.delete(Scope.REPOSITORY, "web", "TOKEN", ADMIN)
    elif why == "no key sent":
        recipient = None
    elif why == "too large":  # 2 x 16 Ki emoji, 12 bytes each JSON-escaped: over 512 KiB once sealed
        book.set(Scope.REPOSITORY, "web", "TOKEN", "😀" * 16384, ADMIN)
        book.set(Scope.TENANT, "acme", "SHARED", "😀" * 16384, ADMIN)
        book.delete(Scope.REPOSITORY, "web", "SHARED", ADMIN)
    elif why == "no keyring":
        book = SecretBook(ledger, None)
    else:  # the scheduler runs with a key that is not the one the gateway encrypted with
        book = SecretBook(ledger, Keyring.from_setting(Keyring.generate_key()))
    ok, secrets = claim(ledger, book, run_id, job_id, attempt, "runner-1", recipient)
    assert ok and secrets.values == {} and secrets.error is not None and expected in secrets.error


def test_no_stored_event_holds_a_value(ledger: LedgerApp, book: SecretBook) -> None:
    run_id, job_id, attempt = queued(ledger)
    claim(ledger, book, run_id, job_id, attempt, "runner-1", Recipient())
    stored = b"".join(n.topic.encode() + n.state for n in ledger.store.notifications_after(0, 10_000))
    assert b"Repository.SecretSet" in stored and b'"ciphertext":"v1.' in stored
    for value in (b"the-token", b"repository-shared", b"tenant-shared"):
        assert value not in stored
