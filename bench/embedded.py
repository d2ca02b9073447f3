"""The embedded default under concurrent pushes: what a newcomer's `ledgerci dev` holds.

Starts `ledgerci dev` (SQLite, embedded nats-server, local executor, every service in one
process) as a user would, one tenant with quotas out of the way, one repository with one
commit per push, then C client threads each push P distinct commits of a two-job no-op
workflow as fast as the answers come. Counts every answer by status code, then waits until
every run has ended and counts jobs from the read model.

    .venv/bin/python -m bench.embedded --clients 16 --pushes 500
    .venv/bin/python -m bench.embedded --clients 16 --pushes 100 --profile /tmp/profiles

Pushes/s is accepted pushes over the push phase; jobs/s is jobs ended over first push to last
run ended (the backlog drains after the pushes stop, so that is the sustained rate).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import httpx

from bench.profiling import children, cpu_seconds, sampled, summary
from tests.support.git_repo import GitRepo
from tests.support.processes import free_port

WORKFLOW = "jobs:\n  - name: build\n    run: 'true'\n  - name: test\n    run: 'true'\n"
# The same two no-op jobs for the scripted executor (`--executor scripted`): no process per job,
# so what is left is ledgerci's own cost.
SCRIPTED_WORKFLOW = "jobs:\n  - name: build\n    run: exit 0\n  - name: test\n    run: exit 0\n"
TOKEN = "bench-admin-token"


def measure(clients: int, pushes: int, slots: int, source: Path, profile: Path | None = None,
            executor: str = "local") -> dict[str, object]:
    base = Path(tempfile.mkdtemp(prefix="ledgerci-bench-embedded-"))
    port = free_port()
    log = open(base / "dev.log", "wb")  # noqa: SIM115
    env = {**os.environ, "LEDGERCI_ADMIN_TOKEN": TOKEN, "LEDGERCI_RUNNER_SLOTS": str(slots),
           "LEDGERCI_LOG_LEVEL": "WARNING", "PYTHONPATH": str(source)}
    dev = subprocess.Popen([sys.executable, "-m", "ledgerci.cli", "dev", "--data-dir", str(base / "data"),
                            "--port", str(port), "--executor", executor],
                           env=env, stdout=log, stderr=subprocess.STDOUT, cwd=source)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, dev)
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        http.post("/api/v1/tenants", json={"id": "bench"}).raise_for_status()
        http.patch("/api/v1/tenants/bench", json={
            "pushes_per_minute": 1_000_000, "max_queued_runs": 1_000_000, "max_concurrent_jobs": 1000,
        }).raise_for_status()
        repo = GitRepo(base / "repo")
        workflow = SCRIPTED_WORKFLOW if executor == "scripted" else WORKFLOW
        commits = repo.many_commits({".ledgerci.yml": workflow}, clients * pushes)
        http.post("/api/v1/repositories", json={"id": "bench", "tenant_id": "bench",
                                                 "clone_url": repo.clone_url}).raise_for_status()
        answers: collections.Counter[int] = collections.Counter()
        errors: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()

        def client(share: list[str]) -> None:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as own:
                for commit in share:
                    response = own.post("/api/v1/push", json={"repository_id": "bench", "commit": commit,
                                                               "ref": "refs/heads/main"})
                    with lock:
                        answers[response.status_code] += 1
                        if response.status_code >= 300:
                            errors[response.text[:160]] += 1

        # The dev process and its children (the runner; nats-server is not Python: no samples).
        pids = {"dev": dev.pid, **{f"child-{pid}": pid for pid in children(dev.pid)}}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        with sampled(pids, profile) if profile else nullcontext() as stacks:
            started = time.monotonic()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(client, [commits[n::clients] for n in range(clients)]))
            pushed = time.monotonic()
            accepted = sum(count for code, count in answers.items() if 200 <= code < 300)
            ended = _wait_all_ended(http, accepted, dev)
            finished = time.monotonic()
        cpu = {_process_name(pid, name): cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        for name, stacks_file in (stacks or {}).items():
            print(f"  profile of {name} ({stacks_file}):\n{summary(stacks_file)}")
        return {
            "answers": dict(answers), "errors": dict(errors), "accepted": accepted,
            "push_seconds": pushed - started, "pushes_per_s": accepted / (pushed - started),
            "runs_ended": ended, "jobs": 2 * ended, "all_seconds": finished - started,
            "jobs_per_s": 2 * ended / (finished - started),
            "cpu_ms_per_job": {name: 1000 * seconds / max(1, 2 * ended) for name, seconds in cpu.items()},
        }
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dev.kill()
        log.close()
        print(f"  (ledgerci dev's log: {base / 'dev.log'})", file=sys.stderr)


def _process_name(pid: int, fallback: str) -> str:
    """`dev`, or what a child runs (`runner`, `nats-server`), read from its command line."""
    if fallback == "dev":
        return fallback
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return fallback
    words = [Path(word.decode()).name for word in argv if word]
    return "runner" if "runner" in words else words[0] if words else fallback


def _wait_ready(url: str, dev: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if dev.poll() is not None:
            raise RuntimeError("ledgerci dev exited at start")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # start-up, not measured
    raise TimeoutError("ledgerci dev did not become ready")


def _wait_all_ended(http: httpx.Client, runs: int, dev: subprocess.Popen[bytes]) -> int:
    """Runs ended (succeeded or failed), once none is queued or running, or after 30 minutes."""
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline and dev.poll() is None:
        counts = _ended_counts(http)
        if sum(counts.values()) >= runs:
            return counts["succeeded"]
        time.sleep(0.2)  # the client's own polling, not part of the system
    return _ended_counts(http)["succeeded"]


def _ended_counts(http: httpx.Client) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    text = http.get("/metrics").text
    queued_or_running = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                            if line.startswith("ledgerci_jobs{"))
    if queued_or_running:
        return counts
    for status in ("succeeded", "failed", "cancelled", "skipped"):
        counts[status] = _count_runs(http, status)
    return counts


def _count_runs(http: httpx.Client, status: str) -> int:
    total, cursor = 0, None
    while True:
        params: dict[str, object] = {"status": status, "limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = http.get("/api/v1/runs", params=params).json()
        total += len(page["runs"])
        cursor = page.get("next_cursor")
        if not cursor:
            return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--pushes", type=int, default=500, help="per client")
    parser.add_argument("--slots", type=int, default=8, help="LEDGERCI_RUNNER_SLOTS of the embedded runner")
    parser.add_argument("--source", type=Path, default=Path.cwd(),
                        help="the ledgerci checkout to run (to compare two commits side by side)")
    parser.add_argument("--profile", type=Path, help="sample the dev process and the runner with py-spy")
    parser.add_argument("--executor", choices=["local", "scripted"], default="local",
                        help="scripted: the jobs start no process (ledgerci's own cost alone)")
    args = parser.parse_args()
    result = measure(args.clients, args.pushes, args.slots, args.source.absolute(), args.profile, args.executor)
    print(f"clients {args.clients} x pushes {args.pushes} (slots {args.slots}, executor {args.executor}), "
          f"source {args.source}")
    print(f"  answers: {result['answers']}")
    for text, count in result["errors"].items():  # type: ignore[attr-defined]
        print(f"  {count} x {text}")
    print(f"  accepted {result['accepted']} pushes in {result['push_seconds']:.1f} s: "
          f"{result['pushes_per_s']:.1f} pushes/s")
    print(f"  {result['runs_ended']} runs succeeded, {result['jobs']} jobs in {result['all_seconds']:.1f} s "
          f"from the first push: {result['jobs_per_s']:.1f} jobs/s")
    cpu: dict[str, float] = result["cpu_ms_per_job"]  # type: ignore[assignment]
    print("  CPU ms per job (the process and the children it reaped): "
          + ", ".join(f"{name} {ms:.1f}" for name, ms in sorted(cpu.items(), key=lambda kv: -kv[1]))
          + f"; total {sum(cpu.values()):.1f}")


if __name__ == "__main__":
    main()
