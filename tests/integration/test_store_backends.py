"""The write side and the read model behave the same on SQLite and PostgreSQL.

One test body, two backends: each subclass only says where the database is.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from eventsourcing.persistence import OperationalError

from commands.app import LedgerApp
from commands.principal import Principal
from commands.runs import PushResult
from commands.schema import create_event_store
from commands.store import eventsourcing_env
from domain.errors import AlreadyExistsError, RepositoryNotFoundError
from domain.ids import run_id_for
from domain.messages import FinishJob, Heartbeat, StartJob
from domain.run import Run
from projections.queries import RunQueries
from projections.rebuild import switch_over, verify
from projections.runs import RunsProjection, rfc3339
from projections.schema import create_read_model_tables
from projections.sql import Database, open_database

pytestmark = pytest.mark.integration

ADMIN = Principal("admin", None)
WORKFLOW = b"jobs:\n  - name: a\n    run: echo a\n  - name: b\n    run: echo b\n"
COMMIT = "c" * 40


class StoreContract:
    @pytest.fixture
    def database_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def ledger(self, database_url: str) -> Iterator[LedgerApp]:
        app = LedgerApp(env=eventsourcing_env(database_url))
        create_event_store(app, database_url)
        yield app
        app.close()

    @pytest.fixture
    def db(self, database_url: str, ledger: LedgerApp) -> Iterator[Database]:
        database = open_database(database_url)
        create_read_model_tables(database)
        yield database
        database.close()

    @pytest.fixture
    def repository(self, ledger: LedgerApp) -> str:
        ledger.registry.create_tenant("acme", name="Acme", weight=1, max_concurrent_jobs=2, max_queued_runs=10,
                             pushes_per_minute=60, actor="admin")
        ledger.registry.register_repository("web", tenant_id="acme", clone_url="file:///x", principal=ADMIN)
        return "web"

    def test_duplicate_push_returns_existing_run(self, ledger: LedgerApp, repository: str):
        first = ledger.runs.push(repository, COMMIT, "refs/heads/main", ADMIN)
        again = ledger.runs.push(repository, COMMIT.upper(), "refs/heads/other", ADMIN)
        assert (first.duplicate, again.duplicate) == (False, True)
        assert first.run_id == again.run_id
        assert len(ledger.audit.history(first.run_id)) == 1

    def test_a_tag_is_a_run_of_its_own_and_one_recorded_under_its_commits_id_stays_the_tags(
            self, ledger: LedgerApp, repository: str):
        branch = ledger.runs.push(repository, COMMIT, "refs/heads/main", ADMIN)
        tagged = ledger.runs.push(repository, COMMIT, "refs/tags/v1", ADMIN)
        assert not tagged.duplicate and tagged.run_id not in (branch.run_id, run_id_for(repository, COMMIT))
        assert ledger.runs.push(repository, COMMIT, "refs/tags/v1", ADMIN) == PushResult(tagged.run_id, True)
        assert ledger.runs.rerun(tagged.run_id, ADMIN) == run_id_for(repository, COMMIT, 1, "refs/tags/v1")
        # Recorded before tags had runs of their own: the tag's first push took its commit's id.
        older = "b" * 40
        ledger.store.save_together(Run.request(
            run_id=run_id_for(repository, older), repository_id=repository, tenant_id="acme", commit=older,
            ref="refs/tags/v0", clone_url="file:///x", rerun=0, request_id="q", actor="admin", at=ledger.clock()))
        assert ledger.runs.push(repository, older, "refs/tags/v0", ADMIN) == PushResult(run_id_for(repository, older),
                                                                                        True)
        assert ledger.runs.rerun(run_id_for(repository, older), ADMIN) == run_id_for(repository, older, 1,
                                                                                     "refs/tags/v0")
        assert ledger.runs.push(repository, older, "refs/tags/v0.1", ADMIN).duplicate is False

    def test_push_to_another_tenants_repository_is_not_found(self, ledger: LedgerApp, repository: str):
        with pytest.raises(RepositoryNotFoundError):
            ledger.runs.push(repository, COMMIT, None, Principal("tenant:other", "other"))

    def test_creating_a_tenant_twice_is_refused(self, ledger: LedgerApp, repository: str):
        with pytest.raises(AlreadyExistsError):
            ledger.registry.create_tenant("acme", name="Acme", weight=1, max_concurrent_jobs=2, max_queued_runs=10,
                                 pushes_per_minute=60, actor="admin")

    def test_tokens_resolve_to_their_tenant_by_digest(self, ledger: LedgerApp, repository: str):
        token = ledger.registry.issue_token("acme", actor="admin")
        assert ledger.registry.tenant_of_token(token) == "acme"
        assert ledger.registry.tenant_of_token(token + "x") is None

    def test_version_conflict_reloads_and_decides_again(self, database_url: str, ledger: LedgerApp,
                                                        repository: str):
        run_id = self._planned_run(ledger, repository)
        job_id = str(ledger.runs.get_run(run_id, ADMIN).jobs[0].id)
        rival = LedgerApp(env=eventsourcing_env(database_url))
        decisions: list[int] = []

        def decide(run: Run) -> bool:
            decisions.append(run.version)
            if len(decisions) == 1:  # another process claims the job between our load and save
                rival.runs.start_job(StartJob(run_id=str(run_id), job_id=job_id, attempt=1, runner_id="r2"))
            return run.start_job(job_id, 1, "r2", ledger.clock())

        ledger.runs._decide(run_id, decide)
        assert decisions[1] == decisions[0] + 1  # reloaded at the rival's version
        history = [e.type for e in ledger.audit.history(run_id)]
        assert history.count("JobStarted") == 1  # the second decision saw it done and appended nothing
        refused = ledger.runs.start_job(StartJob(run_id=str(run_id), job_id=job_id, attempt=1, runner_id="r1")).reply
        assert refused.refused and not refused.ok
        rival.close()

    def test_projection_applies_each_event_once(self, ledger: LedgerApp, db: Database, repository: str):
        run_id = self._planned_run(ledger, repository)
        run = ledger.runs.get_run(run_id, ADMIN)
        first_job = str(run.jobs[0].id)
        ledger.runs.start_job(StartJob(run_id=str(run_id), job_id=first_job, attempt=1, runner_id="r1"))
        ledger.runs.finish_job(FinishJob(run_id=str(run_id), job_id=first_job, attempt=1, runner_id="r1",
                                    exit_code=4))
        projection = RunsProjection(db)
        events = list(ledger.store.events_after(0, 1000))
        position = projection.apply(events[:3])
        assert projection.apply(events) == events[-1][0]
        assert projection.apply(events) == events[-1][0]  # a redelivery changes nothing
        assert position < events[-1][0]

        view = RunQueries(db).get_run(str(run_id), "acme")
        assert view is not None
        assert (view.status, view.commit) == ("failed", COMMIT)
        assert [(j.name, j.status, j.exit_code) for j in view.jobs] == [("a", "failed", 4), ("b", "skipped", None)]
        assert RunQueries(db).get_run(str(run_id), "other") is None
        page = RunQueries(db).list_runs("acme", limit=1)
        assert [r.id for r in page.runs] == [str(run_id)] and page.next_cursor is None

    def test_runs_list_pages_newest_first(self, ledger: LedgerApp, db: Database, repository: str):
        run_ids = [str(ledger.runs.push(repository, f"{i:040x}", None, ADMIN).run_id) for i in range(5)]
        RunsProjection(db).apply(ledger.store.events_after(0, 1000))
        queries = RunQueries(db)
        seen, cursor = [], None
        while True:
            page = queries.list_runs("acme", limit=2, cursor=cursor)
            seen += [r.id for r in page.runs]
            if not (cursor := page.next_cursor):
                break
        assert seen == list(reversed(run_ids))

    def test_a_write_whose_outcome_is_unknown_is_not_reported_as_a_conflict(self, ledger: LedgerApp,
                                                                            repository: str):
        """The store commits, then the connection is lost before the answer arrives."""
        commit_for_real = ledger.store.recorder.insert_events
        lose_next_answer = [True]

        def commit_then_lose_the_answer(stored_events, **kwargs):
            ids = commit_for_real(stored_events, **kwargs)
            if lose_next_answer and lose_next_answer.pop():
                raise OperationalError("server closed the connection unexpectedly")
            return ids

        ledger.store.recorder.insert_events = commit_then_lose_the_answer
        pushed = ledger.runs.push(repository, COMMIT, None, ADMIN)
        assert pushed.duplicate is False  # our own write found, not "someone else's push"
        assert ledger.runs.push(repository, COMMIT, None, ADMIN).duplicate is True

        ledger.runs.plan_run(pushed.run_id, WORKFLOW)
        job_id = str(ledger.runs.get_run(pushed.run_id, ADMIN).jobs[0].id)
        lose_next_answer.append(True)
        started = ledger.runs.start_job(StartJob(run_id=str(pushed.run_id), job_id=job_id, attempt=1, runner_id="r1"))
        assert started.reply.ok and not started.reply.refused
        assert [e.type for e in ledger.audit.history(pushed.run_id)].count("JobStarted") == 1

    def test_rebuild_verify_reports_a_row_altered_by_hand_and_rebuild_repairs_it(
        self, ledger: LedgerApp, db: Database, repository: str
    ):
        run_id = self._planned_run(ledger, repository)
        projection = RunsProjection(db)
        history = [item for page in ledger.store.history_pages() for item in page]
        projection.apply(history)

        def events_after(position: int, limit: int) -> list:
            return list(ledger.store.events_after(position, limit))

        assert verify(db, events_after) == ([], history[-1][0])
        with db.transaction() as cursor:
            cursor.execute("UPDATE lci_runs SET status = 'succeeded' WHERE id = ?", (str(run_id),))
        found, _ = verify(db, events_after)
        assert len(found) == 1 and str(run_id) in found[0] and "status: live 'succeeded'" in found[0]
        assert switch_over(db, events_after) == (len(history), history[-1][0])
        assert verify(db, events_after)[0] == []
        assert RunQueries(db).get_run(str(run_id), None).status == "queued"

    def test_switch_over_while_pushes_and_the_projector_go_on_loses_and_repeats_nothing(
        self, ledger: LedgerApp, db: Database, repository: str
    ):
        projection = RunsProjection(db)

        def events_after(position: int, limit: int) -> list:
            return list(ledger.store.events_after(position, limit))

        for n in range(30):
            ledger.runs.plan_run(ledger.runs.push(repository, f"{n:040x}", None, ADMIN).run_id, WORKFLOW)
        done = threading.Event()

        def live_system() -> None:
            n = 30
            while not done.is_set():
                ledger.runs.plan_run(ledger.runs.push(repository, f"{n:040x}", None, ADMIN).run_id, WORKFLOW)
                projection.catch_up(lambda position: events_after(position, 50))
                n += 1

        worker = threading.Thread(target=live_system)
        worker.start()
        try:
            for _ in range(3):
                switch_over(db, events_after)
        finally:
            done.set()
            worker.join()
        projection.catch_up(lambda position: events_after(position, 100_000))
        found, position = verify(db, events_after)
        assert found == [] and position == ledger.store.recorder.max_notification_id()
        requested = [e for page in ledger.store.history_pages() for _, e in page if isinstance(e, Run.RunRequested)]
        assert len(db.query("SELECT id FROM lci_runs")) == len(requested) > 30

    def test_heartbeats_applied_in_one_batch_leave_the_last_lease(
        self, ledger: LedgerApp, db: Database, repository: str
    ):
        run_id = self._planned_run(ledger, repository)
        job_id = str(ledger.runs.get_run(run_id, ADMIN).jobs[0].id)
        ids = {"run_id": str(run_id), "job_id": job_id, "attempt": 1, "runner_id": "r1"}
        ledger.runs.start_job(StartJob(**ids))
        leases = [ledger.runs.heartbeat(Heartbeat(**ids)).reply.lease_expires_at for _ in range(12)]
        RunsProjection(db).apply(item for page in ledger.store.history_pages() for item in page)
        stored = db.query("SELECT lease_expires_at FROM lci_jobs WHERE id = ?", (job_id,))[0][0]
        assert stored == rfc3339(leases[-1])
        assert verify(db, lambda position, limit: list(ledger.store.events_after(position, limit)))[0] == []

    @staticmethod
    def _planned_run(ledger: LedgerApp, repository: str) -> UUID:
        run_id = ledger.runs.push(repository, COMMIT, "refs/heads/main", ADMIN).run_id
        ledger.runs.plan_run(run_id, WORKFLOW)
        return run_id


class TestSqlite(StoreContract):
    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'ledgerci.db'}"


class TestPostgres(StoreContract):
    @pytest.fixture
    def database_url(self, postgres_url: str) -> str:
        return postgres_url
