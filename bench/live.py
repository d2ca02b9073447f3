"""Live logs: how long a line printed by a job takes to reach an SSE client, and how many
lines per second one job can stream with none lost.

    python -m bench.live --lines 200 --flood 1000000

Every service is its own process (PostgreSQL with fsync, JetStream with sync=always). The
latency job prints a line with the time it was printed (`date +%s.%N`, the same clock as the
client's) every 20 ms; the client follows `GET /jobs/{id}/log/stream` and notes when each
line arrives. The flood job prints `seq 1 N` as fast as it can; the client checks that every
line arrived, in order, and divides by the time from the first line to the last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from bench.harness import bench_cluster
from bench.latency import summary
from ledgerci import sse


def follow_lines(api, job_id: str):
    """(arrival time, line) for each line of the job's log, as it streams."""
    pending = ""
    for message in sse.follow(api.http, f"/api/v1/jobs/{job_id}/log/stream"):
        if message.event != "log":
            continue
        arrived = time.time()
        pending += json.loads(message.data)["text"]
        *lines, pending = pending.split("\n")
        for line in lines:
            yield arrived, line


def first_job(api, run_id: str) -> str:
    return api.wait_run(run_id, until=lambda run: bool(run["jobs"]))["jobs"][0]["id"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=200, help="lines of the latency job")
    parser.add_argument("--flood", type=int, default=1_000_000, help="lines of the flood job")
    args = parser.parse_args()

    services = ("relay", "projector", "scheduler", "runner", "gateway")
    with bench_cluster(services, {}) as bench:
        api = bench.api
        latency_job = (f"jobs:\n  - name: ticks\n    run: |\n      for i in $(seq 1 {args.lines}); do "
                       f"echo \"$i $(date +%s.%N)\"; sleep 0.02; done\n")
        commit = bench.repo.commit({".ledgerci.yml": latency_job})
        run_id = api.push(bench.repository_id, commit).json()["run_id"]
        latencies = []
        for arrived, line in follow_lines(api, first_job(api, run_id)):
            printed = float(line.split()[1])
            latencies.append((arrived - printed) * 1000)

        flood_job = f"jobs:\n  - name: flood\n    run: seq 1 {args.flood}\n"
        commit = bench.repo.commit({".ledgerci.yml": flood_job})
        run_id = api.push(bench.repository_id, commit).json()["run_id"]
        expected, first_at, last_at = 1, None, None
        for arrived, line in follow_lines(api, first_job(api, run_id)):
            assert line == str(expected), f"line {expected} arrived as {line!r}"
            expected += 1
            first_at = first_at or arrived
            last_at = arrived
        received = expected - 1
        assert received == args.flood, f"{received} of {args.flood} lines arrived"

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}\n")
    print("| measure | p50 ms | p99 ms | mean ms | n |")
    print("| --- | --- | --- | --- | --- |")
    print(summary("line printed by the job → received by an SSE client", latencies))
    seconds = (last_at or 0) - (first_at or 0)
    print(f"\nflood: {received} lines ({received and len(str(received))}-digit counter), all in order, "
          f"first to last line in {seconds:.2f}s: {received / seconds:,.0f} lines/s")


if __name__ == "__main__":
    main()
