"""Fair admission: shares against weights, how soon light tenants start under a heavy one, and
what one admission decision costs with 10 and with 10,000 queued jobs.

The first two run on a production-like set-up (bench.harness: PostgreSQL with fsync on, a
nats-server with `sync_interval: always`, every service its own process) with one runner of
4 slots that appears once every backlog is queued; they are measured from the event history.
The decision cost is the admission leader's own code (commands.fair_share), timed in process.

    .venv/bin/python -m bench.fairness
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.harness import bench_cluster
from commands.fair_share import FairShare
from tests.support.fairness import (
    attempts_by_tenant,
    count_jobs,
    history,
    jain_index,
    one_job,
    shares_under_contention,
    starts_in_order,
    tenant_with_backlog,
    wait_until,
)

SERVICES = ("relay", "projector", "scheduler", "reaper", "gateway")
SLOTS = 4
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def contention(backlogs: dict[str, tuple[int, int]], job_seconds: float):
    """Queue each tenant's backlog (runs, weight), then let 4 slots work: the history."""
    with bench_cluster(SERVICES, {}) as bench:
        database_url = bench.cluster.env["LEDGERCI_DATABASE_URL"]
        runs = [run_id for name, (count, weight) in backlogs.items()
                for run_id in tenant_with_backlog(bench.api, Path(bench.cluster.base_dir), name, count,
                                                  one_job(job_seconds), weight=weight)]
        wait_until(lambda: count_jobs(database_url, "queued") == len(runs), 300, "every job queued")
        bench.cluster.start("runner#pool", env={"LEDGERCI_RUNNER_SLOTS": str(SLOTS)})
        for run_id in runs:
            bench.api.wait_run(run_id, timeout=900)
        return history(database_url)


def noisy_neighbour(heavy: int, light: int, job_seconds: float) -> None:
    lights = ("light-b", "light-c", "light-d")
    events = contention({"heavy": (heavy, 1), **{name: (light, 1) for name in lights}}, job_seconds)
    starts = starts_in_order(events)
    spans = attempts_by_tenant(events)
    opened = starts[0][1]  # the moment the slots appeared: the first start
    heavy_rank = [i for i, (tenant, _) in enumerate(starts) if tenant == "heavy"]
    print(f"noisy neighbour: heavy {heavy} jobs, 3 light tenants {light} jobs each, {SLOTS} slots, "
          f"jobs of {job_seconds}s")
    for name in lights:
        first = next(i for i, (tenant, _) in enumerate(starts) if tenant == name)
        first_at = starts[first][1]
        done = max(end for _, end in spans[name])
        print(f"  {name}: first start #{first + 1} overall, {(first_at - opened).total_seconds() * 1000:.0f} ms "
              f"after the slots appeared; all done after {(done - opened).total_seconds():.1f}s")
    heavy_done = max(end for _, end in spans["heavy"])
    print(f"  heavy: 10th start is #{heavy_rank[9] + 1} overall; backlog drained after "
          f"{(heavy_done - opened).total_seconds():.1f}s")


def weighted(job_seconds: float) -> None:
    weights = {"w1": 1, "w2": 2, "w4": 4}
    events = contention({"w1": (40, 1), "w2": (70, 2), "w4": (130, 4)}, job_seconds)
    shares, window = shares_under_contention(attempts_by_tenant(events), list(weights))
    print(f"weights 1/2/4 on {SLOTS} slots, jobs of {job_seconds}s, {window:.1f}s of contention:")
    for name, weight in weights.items():
        target = weight / sum(weights.values())
        print(f"  {name}: share {shares[name]:.3f}, target {target:.3f} ({(shares[name] / target - 1) * 100:+.1f}%)")
    print(f"  Jain's index over share/weight: {jain_index([shares[n] / w for n, w in weights.items()]):.4f}")


def decision_cost(queued: int, tenants: int, decisions: int = 20_000) -> tuple[float, float]:
    """Median and p99 microseconds of one release into one free slot (plus the end that frees
    it), with `queued` jobs spread over `tenants` tenants, the queue kept at that size."""
    share = FairShare()
    for t in range(tenants):
        share.set_tenant(f"t{t}", weight=1 + t % 4, max_concurrent_jobs=1_000_000)
    jobs = 0

    def queue_one(tenant: int) -> None:
        nonlocal jobs
        jobs += 1
        run_id = job_id = f"j{jobs}"
        share.route(run_id, f"t{tenant}", {job_id: "default"})
        share.queued(run_id, job_id, 1)

    for n in range(queued):
        queue_one(n % tenants)
    samples = []
    for n in range(decisions):
        started = time.perf_counter()
        (item,) = share.release("default", 1)
        samples.append(time.perf_counter() - started)
        share.ended(item.job_id, item.attempt, EPOCH + timedelta(seconds=n))
        share.forget_run(item.run_id)
        queue_one(int(item.tenant_id[1:]))  # keep the backlog at its size
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99)] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job-seconds", type=float, default=0.2)
    parser.add_argument("--only", choices=("cost", "neighbour", "weights"), nargs="*")
    args = parser.parse_args()
    only = set(args.only or ("cost", "neighbour", "weights"))
    if "cost" in only:
        print("decision cost (one release into one free slot):")
        for queued, tenants in ((10, 10), (10_000, 10), (10_000, 1_000)):
            p50, p99 = decision_cost(queued, tenants)
            print(f"  {queued:>6} queued jobs over {tenants:>5} tenants: p50 {p50:.1f} µs, p99 {p99:.1f} µs")
    if "neighbour" in only:
        noisy_neighbour(200, 5, args.job_seconds)
    if "weights" in only:
        weighted(args.job_seconds)


if __name__ == "__main__":
    main()
