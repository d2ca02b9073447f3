"""`ledgerci dev` (embedded nats-server, SQLite, local executor), driven by the command line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.api import Api
from tests.support.git_repo import GitRepo
from tests.support.invariants import check_invariants
from tests.support.processes import free_port, without_ledgerci_settings

pytestmark = pytest.mark.e2e

TOKEN = "dev-admin-token"


class Dev:
    def __init__(self, data_dir: Path, port: int, process: subprocess.Popen[bytes]) -> None:
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{port}"
        self.process = process

    def cli(self, *args: str, token: str = TOKEN, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**without_ledgerci_settings(), "LEDGERCI_URL": self.url, "LEDGERCI_TOKEN": token,
               "LEDGERCI_DATABASE_URL": f"sqlite:///{self.data_dir / 'ledgerci.db'}"}
        done = subprocess.run([sys.executable, "-m", "ledgerci.cli", *args], env=env, capture_output=True,
                              text=True, timeout=120, cwd=self.data_dir.parent)
        if check and done.returncode != 0:
            raise AssertionError(f"ledgerci {' '.join(args)} exited {done.returncode}: {done.stderr}{done.stdout}")
        return done

    def cli_json(self, *args: str, token: str = TOKEN) -> dict:
        return json.loads(self.cli(*args, "--json", token=token).stdout)


def start_dev(data_dir: Path, *extra: str, env: dict[str, str] | None = None, port: int | None = None) -> Dev:
    port = port or free_port()
    log = open(data_dir.parent / f"{data_dir.name}.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "ledgerci.cli", "dev", "--data-dir", str(data_dir), "--port", str(port), *extra],
        env={**without_ledgerci_settings(), "LEDGERCI_ADMIN_TOKEN": TOKEN, **(env or {})}, stdout=log,
        stderr=subprocess.STDOUT,
        # Outside the source tree, as a user runs it: only what is installed can be imported.
        cwd=data_dir.parent,
    )
    dev = Dev(data_dir, port, process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, (data_dir.parent / f"{data_dir.name}.log").read_text()
        try:
            if httpx.get(f"{dev.url}/readyz", timeout=1).status_code == 200:
                return dev
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # waiting for start-up
    raise TimeoutError("ledgerci dev did not become ready")


def stop_dev(dev: Dev) -> None:
    dev.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert dev.process.wait(timeout=30) in (0, 130, -signal.SIGINT)


def processes_using(path: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(path) in cmdline:
                found.append(cmdline)
    return found


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    dev = start_dev(tmp_path / "data")
    yield dev
    if dev.process.poll() is None:
        stop_dev(dev)


def test_dev_runs_the_scenario_through_the_command_line(tmp_path: Path, dev: Dev):
    repo = GitRepo(tmp_path / "repo")
    commit = repo.commit({
        ".ledgerci.yml": "jobs:\n"
                         "  - name: one\n    run: cat hello.txt; echo \"attempt=$LEDGERCI_ATTEMPT\"\n"
                         "  - name: two\n    run: echo two; exit 5\n"
                         "  - name: three\n    run: echo three\n"
                         "  - name: last\n    when: always\n    run: echo always\n",
        "hello.txt": "hello from the commit\n",
    })
    tenant = dev.cli_json("tenant", "create", "team", "--token-out")
    dev.cli("repo", "add", "app", "--tenant", "team", "--clone-url", repo.clone_url, token=tenant["token"])

    pushed = dev.cli_json("push", "--repo", "app", "--commit", commit, "--ref", "refs/heads/main",
                          token=tenant["token"])
    assert pushed["duplicate"] is False
    done = dev.cli("run", pushed["run_id"], "--watch", "--json", token=tenant["token"], check=False)
    run = json.loads(done.stdout)
    assert done.returncode == 3 and run["status"] == "failed"
    assert [(j["name"], j["status"], j["exit_code"]) for j in run["jobs"]] == [
        ("one", "succeeded", 0), ("two", "failed", 5), ("three", "skipped", None), ("last", "succeeded", 0)]

    first_log = dev.cli("logs", run["jobs"][0]["id"], token=tenant["token"]).stdout
    assert "hello from the commit" in first_log and "attempt=1" in first_log
    assert "always" in dev.cli("logs", "-f", run["jobs"][3]["id"], token=tenant["token"]).stdout

    again = dev.cli_json("push", "--repo", "app", "--commit", commit, token=tenant["token"])
    assert again == {"run_id": pushed["run_id"], "duplicate": True}
    history = dev.cli_json("events", pushed["run_id"], token=tenant["token"])["events"]
    assert [e["type"] for e in history].count("JobStarted") == 3
    assert history[-1]["type"] == "RunFailed"
    assert dev.cli_json("run", pushed["run_id"], "--as-of", "1", token=tenant["token"])["status"] == "queued"
    started = dev.cli_json("events", pushed["run_id"], "--type", "JobStarted", token=tenant["token"])["events"]
    assert len(started) == 3
    listed = dev.cli_json("runs", token=tenant["token"])["runs"]
    assert [r["id"] for r in listed] == [pushed["run_id"]]

    bad = repo.commit({".ledgerci.yml": "jobs:\n  - name: x\n    run: echo\n    retries: lots\n"})
    bad_run = dev.cli_json("push", "--repo", "app", "--commit", bad, token=tenant["token"])
    failed = json.loads(dev.cli("run", bad_run["run_id"], "--watch", "--json", check=False).stdout)
    assert failed["status"] == "failed" and "line 4" in failed["error"] and "jobs[0].retries" in failed["error"]

    refused = dev.cli("push", "--repo", "nope", "--commit", commit, check=False)
    assert refused.returncode == 1 and "404" in refused.stderr

    # The read model, rebuilt from the history while the system runs, is what it was.
    assert "0 difference(s)" in dev.cli("projections", "rebuild", "--verify").stdout
    assert "rebuilt the read model from" in dev.cli("projections", "rebuild").stdout
    assert json.loads(dev.cli("run", pushed["run_id"], "--json", check=False).stdout) == run


def test_ctrl_c_leaves_nothing_running(tmp_path: Path):
    dev = start_dev(tmp_path / "data")
    assert any("nats-server" in p for p in processes_using(dev.data_dir))
    stop_dev(dev)
    assert processes_using(dev.data_dir) == []


def test_demo_pushes_a_sample_repository_that_succeeds(tmp_path: Path):
    dev = start_dev(tmp_path / "data", "--demo")
    try:
        deadline = time.monotonic() + 60
        runs: list = []
        while time.monotonic() < deadline:
            runs = dev.cli_json("runs")["runs"]
            if runs and runs[0]["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.2)
        assert runs and runs[0]["status"] == "succeeded", runs
        run = dev.cli_json("run", runs[0]["id"])
        assert [j["name"] for j in run["jobs"]] == ["build", "test", "report"]
    finally:
        stop_dev(dev)


def test_concurrent_pushes_to_the_embedded_default_run_once_across_a_sigkill(tmp_path: Path):
    """The embedded default's write path (one writer lock per SQLite file, writes queued,
    commands.sqlite_store) under 8 concurrent clients, each commit pushed by two of them: every
    answer is 2xx while the process lives, the two answers of a commit name one run, and after
    the whole process tree is SIGKILLed mid-load and started again on the same data, every
    accepted push runs, each job's outcome once (the invariant checker over the history)."""
    data_dir = tmp_path / "data"
    env = {"LEDGERCI_RUNNER_SLOTS": "4", "LEDGERCI_LEASE_SECONDS": "3"}
    dev = start_dev(data_dir, env=env)
    http = httpx.Client(base_url=dev.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    http.post("/api/v1/tenants", json={"id": "load"}).raise_for_status()
    http.patch("/api/v1/tenants/load", json={"pushes_per_minute": 100_000, "max_queued_runs": 100_000,
                                             "max_concurrent_jobs": 100}).raise_for_status()
    repo = GitRepo(tmp_path / "repo")
    job = "    retries: 3\n    run: 'true'\n"
    workflow = f"jobs:\n  - name: build\n{job}  - name: test\n{job}"
    commits = repo.many_commits({".ledgerci.yml": workflow}, 120)
    http.post("/api/v1/repositories", json={"id": "load", "tenant_id": "load",
                                             "clone_url": repo.clone_url}).raise_for_status()

    half_answered = threading.Event()

    def push_all(base_url: str, batch: list[str]) -> tuple[list[int], dict[str, set[str]]]:
        codes: list[int] = []
        run_ids: dict[str, set[str]] = {}

        def push(commit: str) -> None:
            with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as own:
                try:
                    answer = own.post("/api/v1/push", json={"repository_id": "load", "commit": commit})
                except httpx.TransportError:
                    codes.append(0)  # the process was killed under this push: its client retries
                    return
                codes.append(answer.status_code)
                if len(codes) >= len(batch) // 2:
                    half_answered.set()
                if answer.status_code in (200, 202):
                    run_ids.setdefault(commit, set()).add(answer.json()["run_id"])

        # Each commit twice, by different clients at nearly the same moment.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(push, [commit for commit in batch for _ in range(2)]))
        return codes, run_ids

    first_codes, first_runs = push_all(dev.url, commits[:60])
    assert set(first_codes) <= {200, 202}, first_codes
    assert sorted(first_codes).count(202) == 60  # one new run per commit, the other push its duplicate

    # Kill the whole tree while the second half is being pushed and jobs are running.
    half_answered.clear()
    with ThreadPoolExecutor(1) as background:
        second = background.submit(push_all, dev.url, commits[60:])
        assert half_answered.wait(60)
        dev.process.send_signal(signal.SIGKILL)
        dev.process.wait()
        second_codes, second_runs = second.result()
    assert set(second_codes) <= {0, 200, 202}, second_codes

    dev = start_dev(data_dir, env=env, port=int(dev.url.rsplit(":", 1)[1]))
    try:
        # The clients retry what they did not get an answer for; a push that did land answers its run.
        retry_codes, retry_runs = push_all(dev.url, commits[60:])
        assert set(retry_codes) <= {200, 202}, retry_codes
        every: dict[str, set[str]] = {}
        for found in (first_runs, second_runs, retry_runs):
            for commit, ids in found.items():
                every.setdefault(commit, set()).update(ids)
        assert sorted(every) == sorted(commits) and all(len(ids) == 1 for ids in every.values())
        api = Api(dev.url, TOKEN)
        for ids in every.values():
            run = api.wait_run(next(iter(ids)), timeout=120)
            assert run["status"] == "succeeded", api.explain(run["id"])
    finally:
        stop_dev(dev)
    assert check_invariants(f"sqlite:///{data_dir / 'ledgerci.db'}") == []
