"""Replay and audit: what reading the history back costs, on PostgreSQL (fsync on).

Writes N complete runs (push, plan, start/finish of each job) through the application
service, and one long run (a job with H heartbeats, so H+ events in one stream). Then times:
- decode: every stored event read in pages and turned back into a domain event;
- replay: every run folded from its events into its state (what `as_of` and commands do);
- rebuild: the read models built again in fresh tables and switched over (`projections rebuild`);
- verify: the fresh tables compared with the live ones (`projections rebuild --verify`);
- audit: every stream's chain recomputed (`audit verify --all`);
- the long run's load, from its newest snapshot and from its events alone (median of 20).

    .venv/bin/python -m bench.rebuild --runs 1000 --heartbeats 5000
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from uuid import UUID

from commands.app import LedgerApp
from commands.principal import Principal
from commands.schema import create_event_store
from commands.store import eventsourcing_env
from domain.messages import FinishJob, Heartbeat, StartJob
from projections.rebuild import switch_over, verify
from projections.runs import RunsProjection
from projections.schema import create_read_model_tables
from projections.sql import open_database
from tests.support.processes import PostgresServer, make_base_dir

WORKFLOW = b"jobs:\n  - name: a\n    run: 'true'\n  - name: b\n    run: 'true'\n  - name: c\n    run: 'true'\n"
ADMIN = Principal("admin", None)


def seed(ledger: LedgerApp, runs: int, heartbeats: int) -> UUID:
    ledger.registry.create_tenant("t", name="t", weight=1, max_concurrent_jobs=1, max_queued_runs=1,
                         pushes_per_minute=1, actor="bench")
    ledger.registry.register_repository("r", tenant_id="t", clone_url="file:///x", principal=ADMIN)
    for n in range(runs):
        run = ledger.runs.plan_run(ledger.runs.push("r", f"{n:040x}", None, ADMIN).run_id, WORKFLOW)
        for job in run.jobs:
            ids = {"run_id": str(run.id), "job_id": str(job.id), "attempt": 1, "runner_id": "x"}
            ledger.runs.start_job(StartJob(**ids))
            ledger.runs.finish_job(FinishJob(**ids, exit_code=0))
    long_run = ledger.runs.plan_run(ledger.runs.push("r", "f" * 40, None, ADMIN).run_id, WORKFLOW)
    ids = {"run_id": str(long_run.id), "job_id": str(long_run.jobs[0].id), "attempt": 1, "runner_id": "x"}
    ledger.runs.start_job(StartJob(**ids))
    for _ in range(heartbeats):
        ledger.runs.heartbeat(Heartbeat(**ids))
    return long_run.id


def timed(what: str, events: int, action: Callable[[], object]) -> object:
    started = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - started
    print(f"{what:<44} {events:>8} events {elapsed:7.2f} s {events / elapsed:>9.0f} events/s")
    return result


def median_ms(action: Callable[[], object], times: int = 20) -> float:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--heartbeats", type=int, default=5000)
    args = parser.parse_args()
    postgres = PostgresServer.create(make_base_dir("ledgerci-bench-"), fsync=True)
    try:
        ledger = LedgerApp(env=eventsourcing_env(postgres.url), audit_key=b"bench")
        create_event_store(ledger, postgres.url)
        db = open_database(postgres.url)
        create_read_model_tables(db)
        long_run = seed(ledger, args.runs, args.heartbeats)
        total = ledger.store.max_position()
        print(f"{args.runs} runs of 3 jobs and one run of {args.heartbeats} heartbeats: {total} events")

        def events_after(position: int, limit: int) -> list:
            return list(ledger.store.events_after(position, limit))

        history = timed("decode (read pages + mapper)", total,
                        lambda: [item for page in ledger.store.history_pages(2000) for item in page])
        run_ids = {e.originator_id for _, e in history if type(e).__qualname__.startswith("Run.")}
        timed("replay (fold every run from its events)", total,
              lambda: [ledger.audit.replay_events_only(run_id) for run_id in run_ids])
        timed("rebuild into fresh tables + switch over", total, lambda: switch_over(db, events_after))
        found, _ = timed("verify (fresh tables vs live)", total, lambda: verify(db, events_after))  # type: ignore[misc]
        assert found == [], found
        checked, broken = timed("audit verify --all (chain links)", total, ledger.audit.verify_chain)  # type: ignore[misc]
        assert broken == [] and checked == total
        timed("apply only (RunsProjection.rebuild, decoded)", total,
              lambda: RunsProjection(db).rebuild([history]))

        version = ledger.runs.get_run(long_run, ADMIN).version
        with_snapshots = median_ms(lambda: ledger.runs.load_run(long_run))
        events_only = median_ms(lambda: ledger.audit.replay_events_only(long_run))
        print(f"long run of {version} events: load {with_snapshots:.2f} ms from its newest snapshot, "
              f"{events_only:.2f} ms from its events alone")
        db.close()
        ledger.close()
    finally:
        postgres.destroy()


if __name__ == "__main__":
    main()
