"""Runner killed (or cut off) → its job running again on another runner.

Two runners, PostgreSQL and a nats-server, every service its own process. Each round pushes a
run whose job sleeps on its first attempt, SIGKILLs the runner holding it and restarts it (or,
with `--fault partition`, cuts it off from the network with iptables and heals it once the job
has moved), and measures from the fault to the `JobStarted` of attempt 2 (the event's own time).

    .venv/bin/python -m bench.failover --rounds 10 --lease 5
    .venv/bin/python -m bench.failover --rounds 10 --lease 5 --fault partition   # as root
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import ExitStack
from datetime import UTC, datetime

from bench.harness import bench_cluster
from tests.support.partition import Partition

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
    parser.add_argument("--fault", choices=("kill", "partition"), default="kill",
                        help="SIGKILL the runner holding the job, or cut it off from everything (iptables)")
    args = parser.parse_args()
    services = ("relay", "projector", "scheduler", "reaper", "gateway")
    env = {"LEDGERCI_LEASE_SECONDS": str(args.lease), "LEDGERCI_REAPER_INTERVAL_SECONDS": "0.25"}
    with ExitStack() as partitions_healed, bench_cluster(services, env) as bench:
        api, repo, repository_id, cluster = bench.api, bench.repo, bench.repository_id, bench.cluster
        partitions = {name: partitions_healed.enter_context(Partition.around()) for name in ("runner", "runner#2")}
        for name, partition in partitions.items():
            cluster.start(name, wrap=partition.wrap)
        recoveries = []
        for round_number in range(args.rounds):
            commit = repo.commit({".ledgerci.yml": SLOW_FIRST_ATTEMPT, "n": str(round_number)})
            run_id = api.push(repository_id, commit).json()["run_id"]
            run = api.wait_run(run_id, until=lambda r: r["jobs"] and r["jobs"][0]["status"] == "running")
            holder = run["jobs"][0]["runner_id"]
            process = cluster.runner_service(holder)
            killed_at = datetime.now(UTC)
            if args.fault == "kill":
                cluster.kill(process)
                cluster.start(process, wrap=partitions[process].wrap)
            else:
                partitions[process].cut()
            api.wait_run(run_id, timeout=args.lease * 4 + 30)
            if partitions[process].is_cut:
                partitions[process].heal()
            started = [e for e in api.events(run_id) if e["type"] == "JobStarted" and e["data"]["attempt"] == 2]
            again = datetime.fromisoformat(started[0]["at"].replace("Z", "+00:00"))
            recoveries.append((again - killed_at).total_seconds())
            time.sleep(0.2)
        print(f"lease {args.lease:.1f} s, reaper every 0.25 s, {args.rounds} rounds, fault: {args.fault}")
        fault = "killed" if args.fault == "kill" else "cut off"
        print(f"runner {fault} → job running again: p50 {statistics.median(recoveries):.2f} s, "
              f"max {max(recoveries):.2f} s, min {min(recoveries):.2f} s")
        print(f"  = lease + {statistics.median(recoveries) - args.lease:.2f} s (median)")


if __name__ == "__main__":
    main()
