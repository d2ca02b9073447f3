"""Runner killed → its job running again on another runner.

Two runners, PostgreSQL and a nats-server, every service its own process. Each round pushes a
run whose job sleeps on its first attempt, SIGKILLs the runner holding it, restarts that
runner, and measures from the kill to the `JobStarted` of attempt 2 (the event's own time).

    .venv/bin/python -m bench.failover --rounds 10 --lease 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime

from bench.harness import bench_cluster

SLOW_FIRST_ATTEMPT = """\
jobs:
  - name: slow
    retries: 1
    run: |
      if [ "$LEDGERCI_ATTEMPT" = 1 ]; then exec sleep 120; fi
      echo recovered
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--lease", type=float, default=5.0)
    args = parser.parse_args()
    services = ("relay", "projector", "scheduler", "reaper", "gateway", "runner", "runner#2")
    env = {"LEDGERCI_LEASE_SECONDS": str(args.lease), "LEDGERCI_REAPER_INTERVAL_SECONDS": "0.25"}
    with bench_cluster(services, env) as bench:
        api, repo, repository_id, cluster = bench.api, bench.repo, bench.repository_id, bench.cluster
        recoveries = []
        for round_number in range(args.rounds):
            commit = repo.commit({".ledgerci.yml": SLOW_FIRST_ATTEMPT, "n": str(round_number)})
            run_id = api.push(repository_id, commit).json()["run_id"]
            run = api.wait_run(run_id, until=lambda r: r["jobs"] and r["jobs"][0]["status"] == "running")
            holder = run["jobs"][0]["runner_id"]
            process = "runner" if holder == "runner" else holder.replace("-", "#")
            killed_at = datetime.now(UTC)
            cluster.kill(process)
            cluster.start(process)
            api.wait_run(run_id, timeout=args.lease * 4 + 30)
            started = [e for e in api.events(run_id) if e["type"] == "JobStarted" and e["data"]["attempt"] == 2]
            again = datetime.fromisoformat(started[0]["at"].replace("Z", "+00:00"))
            recoveries.append((again - killed_at).total_seconds())
            time.sleep(0.2)
        print(f"lease {args.lease:.1f} s, reaper every 0.25 s, {args.rounds} rounds")
        print(f"runner killed → job running again: p50 {statistics.median(recoveries):.2f} s, "
              f"max {max(recoveries):.2f} s, min {min(recoveries):.2f} s")
        print(f"  = lease + {statistics.median(recoveries) - args.lease:.2f} s (median)")


if __name__ == "__main__":
    main()
