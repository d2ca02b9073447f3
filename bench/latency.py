"""Push → first job running, and job → next job handoff, on PostgreSQL and JetStream.

Every service runs as its own process, as in production: PostgreSQL (fsync on), a
nats-server with `sync_interval: always`, the relay, projector, scheduler, one runner and the
gateway. Runs are pushed one at a time (each waits for the one before), with no-op jobs, and
every hop is measured from the event timestamps the services themselves recorded.

    .venv/bin/python -m bench.latency --runs 200 [--jobs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime

from bench.harness import bench_cluster
from commands.app import LedgerApp
from commands.store import eventsourcing_env


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(name: str, values_ms: list[float]) -> str:
    return (f"| {name} | {percentile(values_ms, 0.5):.2f} | {percentile(values_ms, 0.99):.2f} | "
            f"{statistics.mean(values_ms):.2f} | {len(values_ms)} |")


def ms(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=3)
    args = parser.parse_args()

    workflow = "jobs:\n" + "".join(f"  - name: noop{i}\n    run: \"true\"\n" for i in range(args.jobs))
    services = ("relay", "projector", "scheduler", "reaper", "runner", "gateway")
    with bench_cluster(services, {}) as bench:
        api, repository_id = bench.api, bench.repository_id
        commits = [bench.repo.commit({".ledgerci.yml": workflow, "n.txt": str(i)}) for i in range(args.runs + 5)]

        # Warm-up: the mirror clone and the first connections are not what we measure.
        for commit in commits[:5]:
            api.wait_run(api.push(repository_id, commit).json()["run_id"])

        run_ids, push_ms = [], []
        started = time.perf_counter()
        for commit in commits[5:]:
            t0 = time.perf_counter()
            response = api.push(repository_id, commit)
            push_ms.append((time.perf_counter() - t0) * 1000)
            run_ids.append(response.json()["run_id"])
            api.wait_run(run_ids[-1], timeout=60)
        elapsed = time.perf_counter() - started

        ledger = LedgerApp(env=eventsourcing_env(bench.postgres.url))
        hops: dict[str, list[float]] = {k: [] for k in (
            "push → first job claimed (JobStarted)", "  push → planned (relay + planner, git read)",
            "  planned → first job claimed (admission + runner fetch + claim)",
            "job finished → next job claimed (handoff: commit, admission, fetch, claim)",
            "job claimed → job finished (checkout + sh + report)",
        )}
        keys = list(hops)
        for run_id in run_ids:
            events = ledger.audit.history(run_id)
            at = {}
            started_at, finished_at = [], []
            for event in events:
                at.setdefault(event.type, event.at)
                if event.type == "JobStarted":
                    started_at.append(event.at)
                if event.type in ("JobSucceeded", "JobFailed"):
                    finished_at.append(event.at)
            hops[keys[0]].append(ms(started_at[0], at["RunRequested"]))
            hops[keys[1]].append(ms(at["RunPlanned"], at["RunRequested"]))
            hops[keys[2]].append(ms(started_at[0], at["RunPlanned"]))
            for done, nxt in zip(finished_at, started_at[1:], strict=False):
                hops[keys[3]].append(ms(nxt, done))
            for begin, end in zip(started_at, finished_at, strict=True):
                hops[keys[4]].append(ms(end, begin))
        ledger.close()

        print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
              f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}")
        print(f"{args.runs} runs x {args.jobs} no-op jobs, one at a time (the client polls each run's end "
              f"every 50 ms), in {elapsed:.1f}s\n")
        print("| measure | p50 ms | p99 ms | mean ms | n |")
        print("| --- | --- | --- | --- | --- |")
        print(summary("POST /push answered (client side)", push_ms))
        for name, values in hops.items():
            print(summary(name, values))


if __name__ == "__main__":
    main()
