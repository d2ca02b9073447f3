"""Sustained throughput: no-op jobs per second with 1, 2 and 4 runner processes.

Each set-up is fresh (PostgreSQL with fsync on, nats-server with `sync_interval: always`,
every service its own process, one job slot per runner). N runs of one no-op job are pushed
at once by 8 client threads, and the rate is counted from the events' own timestamps: the
first JobStarted to the last JobSucceeded.

    .venv/bin/python -m bench.throughput --runs 400 --runners 1 2 4
    .venv/bin/python -m bench.throughput --runs 400 --runners 1 --slots 8 --profile /tmp/profiles
    .venv/bin/python -m bench.throughput --runs 800 --runners 1 --slots 8 --source /tmp/before .  # side by side
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

import httpx
import psycopg

from bench.harness import Bench, bench_cluster
from bench.profiling import children, cpu_seconds, sampled, summary
from tests.support.api import FINAL

WORKFLOW = "jobs:\n  - name: noop\n    run: 'true'\n"


def measure(runs: int, runners: int, slots: int, profile: Path | None, statements: bool,
            source: Path | None = None) -> tuple[float, float]:
    names = ("relay", "projector", "scheduler", "reaper", "gateway",
             *("runner" if n == 0 else f"runner#{n + 1}" for n in range(runners)))
    # Another checkout's services, run by this benchmark (its modules come first on the path).
    env = {"LEDGERCI_RUNNER_SLOTS": str(slots), **({"PYTHONPATH": str(source)} if source else {})}
    with bench_cluster(names, env,
                       STATEMENT_COUNTING if statements else None) as bench:
        commits = bench.repo.many_commits({".ledgerci.yml": WORKFLOW}, runs)
        if statements:
            count_statements(bench, reset=True)
        counted_before = round_trips(bench)
        pids = {name: process.pid for name, process in bench.cluster.processes.items()}
        cpu_before = cpu_by_process(bench)  # start-up (imports, connections) is not a job's cost
        with sampled(pids, profile / f"{runners}x{slots}") if profile else nullcontext() as stacks:
            with ThreadPoolExecutor(8) as pool:
                run_ids = list(pool.map(lambda c: bench.api.push(bench.repository_id, c).json()["run_id"], commits))
            deadline = time.monotonic() + 600
            for run_id in run_ids:
                remaining = max(deadline - time.monotonic(), 1)
                bench.api.wait_run(run_id, until=lambda r: r["status"] in FINAL, timeout=remaining)
        # Counted before this benchmark reads every run's events below, which is not a job's cost.
        cpu = {name: seconds - cpu_before.get(name, 0.0) for name, seconds in cpu_by_process(bench).items()}
        counted = {name: (count - counted_before[name]) / runs for name, count in round_trips(bench).items()}
        if statements:
            print("  statements per job (pg_stat_statements; calls, total ms, statement):")
            for calls, total_ms, query in count_statements(bench):
                print(f"    {calls / runs:6.2f}  {total_ms / runs:6.3f} ms  {query}")
        for name, stacks_file in (stacks or {}).items():
            print(f"  profile of {name} ({stacks_file}):\n{summary(stacks_file)}")
        started, finished = [], []
        for run_id in run_ids:
            for event in bench.api.events(run_id):
                if event["type"] == "JobStarted":
                    started.append(datetime.fromisoformat(event["at"]))
                elif event["type"] == "JobSucceeded":
                    finished.append(datetime.fromisoformat(event["at"]))
        assert len(finished) == runs, f"{len(finished)} of {runs} jobs succeeded"
        print("  per job: " + ", ".join(f"{name} {count:.1f}" for name, count in counted.items()))
        elapsed = (max(finished) - min(started)).total_seconds()
        print("  CPU ms per job: " + ", ".join(f"{name} {seconds * 1000 / runs:.1f}"
                                             for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1])))
        return runs / elapsed, elapsed


def cpu_by_process(bench: Bench) -> dict[str, float]:
    cpu = {name: cpu_seconds(process.pid) for name, process in bench.cluster.processes.items()}
    postmaster = bench.postgres.pid or 0
    # A backend that exited is counted in the postmaster's children time (it reaped it).
    cpu["postgres (all backends)"] = sum(cpu_seconds(pid) for pid in (postmaster, *children(postmaster)))
    cpu["nats-server"] = cpu_seconds(bench.nats_server.pid or 0)
    return cpu


STATEMENT_COUNTING = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all"}


def count_statements(bench: Bench, reset: bool = False, top: int = 30) -> list[tuple[int, float, str]]:
    """The statements run since the last reset, most called first (needs STATEMENT_COUNTING)."""
    with psycopg.connect(bench.postgres.url, autocommit=True) as conn:
        if reset:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
            return []
        rows = conn.execute("SELECT calls, total_exec_time, query FROM pg_stat_statements "
                            "WHERE query NOT LIKE '%%pg_stat%%' ORDER BY calls DESC LIMIT %s", (top,)).fetchall()
    return [(int(calls), float(total), " ".join(query.split())[:150]) for calls, total, query in rows]


def round_trips(bench: Bench) -> dict[str, float]:
    """Counters of the servers' own: PostgreSQL commits (every service's, this benchmark's
    reads are not commits) and the messages in and out of nats-server."""
    with psycopg.connect(bench.postgres.url, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
    varz = httpx.get(f"{bench.nats_server.monitor_url}/varz", timeout=5).json()
    return {"PostgreSQL transactions": float(row[0] if row else 0), "NATS messages in": float(varz["in_msgs"]),
            "NATS messages out": float(varz["out_msgs"])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--runners", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--slots", type=int, default=1, help="job slots per runner process")
    parser.add_argument("--profile", type=Path, help="sample every service with py-spy; stacks go here")
    parser.add_argument("--statements", action="store_true", help="count PostgreSQL statements per job")
    parser.add_argument("--source", type=Path, nargs="+", default=[None],
                        help="checkouts to run in turn (side by side: `--source /tmp/before .`)")
    args = parser.parse_args()
    print(f"| source | runner processes ({args.slots} slot(s) each) | jobs | seconds | jobs/s |")
    print("| --- | --- | --- | --- | --- |")
    for runners in args.runners:
        for source in args.source:
            rate, elapsed = measure(args.runs, runners, args.slots, args.profile, args.statements,
                                    source.absolute() if source else None)
            print(f"| {source or '.'} | {runners} | {args.runs} | {elapsed:.1f} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
