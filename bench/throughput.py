"""Sustained throughput: no-op jobs per second with 1, 2 and 4 runner processes.

Each set-up is fresh (PostgreSQL with fsync on, nats-server with `sync_interval: always`,
every service its own process, one job slot per runner). N runs of one no-op job are pushed
at once by 8 client threads, and the rate is counted from the events' own timestamps: the
first JobStarted to the last JobSucceeded.

    .venv/bin/python -m bench.throughput --runs 400 --runners 1 2 4
    .venv/bin/python -m bench.throughput --runs 400 --runners 1 --slots 8 --profile /tmp/profiles
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

import httpx
import psycopg

from bench.harness import Bench, bench_cluster
from bench.profiling import children, sampled, summary
from tests.support.api import FINAL

WORKFLOW = "jobs:\n  - name: noop\n    run: 'true'\n"


def measure(runs: int, runners: int, slots: int, profile: Path | None) -> tuple[float, float]:
    names = ("relay", "projector", "scheduler", "reaper", "gateway",
             *("runner" if n == 0 else f"runner#{n + 1}" for n in range(runners)))
    with bench_cluster(names, {"LEDGERCI_RUNNER_SLOTS": str(slots)}) as bench:
        commits = bench.repo.many_commits({".ledgerci.yml": WORKFLOW}, runs)
        counted_before = round_trips(bench)
        pids = {name: process.pid for name, process in bench.cluster.processes.items()}
        with sampled(pids, profile / f"{runners}x{slots}") if profile else nullcontext() as stacks:
            with ThreadPoolExecutor(8) as pool:
                run_ids = list(pool.map(lambda c: bench.api.push(bench.repository_id, c).json()["run_id"], commits))
            deadline = time.monotonic() + 600
            for run_id in run_ids:
                remaining = max(deadline - time.monotonic(), 1)
                bench.api.wait_run(run_id, until=lambda r: r["status"] in FINAL, timeout=remaining)
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
        counted = {name: (count - counted_before[name]) / runs for name, count in round_trips(bench).items()}
        print("  per job: " + ", ".join(f"{name} {count:.1f}" for name, count in counted.items()))
        elapsed = (max(finished) - min(started)).total_seconds()
        cpu = {name: cpu_seconds(process.pid) for name, process in bench.cluster.processes.items()}
        postmaster = bench.postgres.pid or 0
        cpu["postgres (all backends)"] = sum(cpu_seconds(pid) for pid in (postmaster, *children(postmaster)))
        cpu["nats-server"] = cpu_seconds(bench.nats_server.pid or 0)
        print("  CPU ms per job: " + ", ".join(f"{name} {seconds * 1000 / runs:.1f}"
                                             for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1])))
        return runs / elapsed, elapsed


def round_trips(bench: Bench) -> dict[str, float]:
    """Counters of the servers' own: PostgreSQL commits (every service's, this benchmark's
    reads are not commits) and the messages in and out of nats-server."""
    with psycopg.connect(bench.postgres.url, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
    varz = httpx.get(f"{bench.nats_server.monitor_url}/varz", timeout=5).json()
    return {"PostgreSQL transactions": float(row[0] if row else 0), "NATS messages in": float(varz["in_msgs"]),
            "NATS messages out": float(varz["out_msgs"])}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (and its reaped children: job processes) used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--runners", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--slots", type=int, default=1, help="job slots per runner process")
    parser.add_argument("--profile", type=Path, help="sample every service with py-spy; stacks go here")
    args = parser.parse_args()
    print(f"| runner processes ({args.slots} slot(s) each) | jobs | seconds | jobs/s |")
    print("| --- | --- | --- | --- |")
    for runners in args.runners:
        rate, elapsed = measure(args.runs, runners, args.slots, args.profile)
        print(f"| {runners} | {args.runs} | {elapsed:.1f} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
