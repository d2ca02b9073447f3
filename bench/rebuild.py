"""Read model rebuilt from history: events per second, on PostgreSQL (fsync on).

Writes N complete runs (push, plan, start/finish of each job) through the application service,
then times `RunsProjection.rebuild` over the whole history.

    .venv/bin/python -m bench.rebuild --runs 2000
"""

from __future__ import annotations

import argparse
import time

from commands.app import LedgerApp, Principal
from commands.schema import create_event_store
from commands.store import eventsourcing_env
from domain.messages import FinishJob, StartJob
from projections.runs import RunsProjection
from projections.schema import create_read_model_tables
from projections.sql import open_database
from tests.support.processes import PostgresServer, make_base_dir

WORKFLOW = b"jobs:\n  - name: a\n    run: 'true'\n  - name: b\n    run: 'true'\n  - name: c\n    run: 'true'\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    postgres = PostgresServer.create(make_base_dir("ledgerci-bench-"), fsync=True)
    try:
        ledger = LedgerApp(env=eventsourcing_env(postgres.url))
        create_event_store(ledger, postgres.url)
        db = open_database(postgres.url)
        create_read_model_tables(db)
        admin = Principal("admin", None)
        ledger.create_tenant("t", name="t", weight=1, max_concurrent_jobs=1, max_queued_runs=1,
                             pushes_per_minute=1, actor="bench")
        ledger.register_repository("r", tenant_id="t", clone_url="file:///x", principal=admin)
        for n in range(args.runs):
            run = ledger.plan_run(ledger.push("r", f"{n:040x}", None, admin).run_id, WORKFLOW)
            for job in run.jobs:
                ids = {"run_id": str(run.id), "job_id": str(job.id), "attempt": 1, "runner_id": "x"}
                ledger.start_job(StartJob(**ids))
                ledger.finish_job(FinishJob(**ids, exit_code=0))
        started = time.perf_counter()
        rebuilt = RunsProjection(db).rebuild(ledger.history_pages())
        elapsed = time.perf_counter() - started
        print(f"{args.runs} runs, {rebuilt.events} events rebuilt in {elapsed:.2f}s: "
              f"{rebuilt.events / elapsed:.0f} events/s")
        db.close()
        ledger.close()
    finally:
        postgres.destroy()


if __name__ == "__main__":
    main()
