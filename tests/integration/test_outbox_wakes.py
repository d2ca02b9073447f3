"""The projector wakes an outbox's sender only when the projection gave that outbox rows
(ledgerci/services/projector.py): on SQLite, whose row counts are exact, a batch that queues
no commit status and no webhook delivery names neither, and one that queues them names them.
On PostgreSQL a status is "maybe queued" (pipeline mode gives no row count), so it is named."""

from __future__ import annotations

from itertools import count
from pathlib import Path

import pytest

from commands.principal import Principal
from commands.secrets import SecretBook
from commands.subscriptions import Subscriptions
from domain.messages import FinishJob, StartJob
from domain.statuses import StatusKind
from projections.runs import Outbox, RunsProjection
from sealing import Keyring
from tests.support.ledger import ADMIN, acme_ledger, read_model

pytestmark = pytest.mark.integration

_commits = count(1)
WORKFLOW = b"jobs:\n  - name: compile\n    run: make\n"


def one_job_run(ledger, repository_id: str) -> None:
    run_id = ledger.runs.push(repository_id, f"{next(_commits):040x}", "refs/heads/main", ADMIN).run_id
    ledger.runs.plan_run(run_id, WORKFLOW)
    job = ledger.runs.load_run(run_id).jobs[0]
    assert ledger.runs.start_job(StartJob(run_id=str(run_id), job_id=str(job.id), attempt=1, runner_id="r")).reply.ok
    assert ledger.runs.finish_job(FinishJob(run_id=str(run_id), job_id=str(job.id), attempt=1, runner_id="r",
                                            exit_code=0)).reply.ok


def test_a_sender_is_woken_only_for_the_rows_its_outbox_got(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledgerci.db'}"
    with acme_ledger(url) as ledger, read_model(url) as db:
        projection = RunsProjection(db)

        def filled_by_a_run_of(repository_id: str) -> set[Outbox]:
            one_job_run(ledger, repository_id)
            projection.catch_up(lambda position: ledger.store.events_after(position, 500))
            return projection.take_filled_outboxes()

        ledger.registry.register_repository("api", tenant_id="acme", clone_url="file:///api", principal=ADMIN)
        assert filled_by_a_run_of("web") == set()  # no status target, no subscription
        assert projection.take_filled_outboxes() == set()  # taken: not named twice

        book = SecretBook(ledger, Keyring.from_setting(Keyring.generate_key()))
        book.set_status_target("web", StatusKind.GITHUB, "https://api.github.com", "org/web", "token", ADMIN)
        assert filled_by_a_run_of("web") == {Outbox.STATUSES}
        assert filled_by_a_run_of("api") == set()  # another repository's runs queue no status

        Subscriptions(ledger, book).subscribe("acme", "https://hooks.example.com/ci", ["run.failed"], None, None,
                                              Principal("acme", "acme"))
        assert filled_by_a_run_of("api") == set()  # it succeeded: the subscription does not take it
        Subscriptions(ledger, book).subscribe("acme", "https://hooks.example.com/ci", ["job.*"], "api", None,
                                              Principal("acme", "acme"))
        assert filled_by_a_run_of("api") == {Outbox.WEBHOOKS}
        assert filled_by_a_run_of("web") == {Outbox.STATUSES}


def test_on_postgresql_a_status_that_may_have_been_queued_wakes_its_sender(postgres_url: str) -> None:
    with acme_ledger(postgres_url) as ledger, read_model(postgres_url) as db:
        projection = RunsProjection(db)
        one_job_run(ledger, "web")
        projection.catch_up(lambda position: ledger.store.events_after(position, 500))
        assert projection.take_filled_outboxes() == {Outbox.STATUSES}
