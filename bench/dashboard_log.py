"""The dashboard with a big log: how long from opening a job's log page (`#/jobs/<id>`) until
the page answers a click, for a job that logs 16 MiB (the default cap) and for `seq 1 200000`.

Starts `ledgerci dev` from each `--source` checkout in turn (its gateway serves that
checkout's dashboard), runs the two jobs, then opens each log in Debian's headless Chromium
(Playwright, nothing downloaded), already signed in:

    git worktree add /tmp/before <commit>
    .venv/bin/python -m bench.dashboard_log --source /tmp/before --source .

The time runs from the navigation until the log's stream has ended (everything is shown) and
a click on the log has been handled (it takes the focus): a page busy laying out or parsing
answers the click only when it is done. A page that does not answer within --limit seconds
counts as "> limit".
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, sync_playwright

from bench.embedded import _wait_ready
from tests.support.git_repo import GitRepo
from tests.support.processes import free_port

TOKEN = "bench-admin-token"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
SIXTEEN_MIB = 16 * 1024 * 1024
# Build-like lines with a colour in each, up to the cap exactly (the last one cut by `head`).
BIG = ("awk 'BEGIN { for (i = 1; ; i++) printf \"line %07d \\033[32mok\\033[0m compiling module %07d "
       f"of the build\\n\", i, i }}' | head -c {SIXTEEN_MIB}")
JOBS = {"16 MiB": BIG, "seq 1 200000": "seq 1 200000"}
ANSWERED = "() => document.activeElement?.classList.contains('log')"


def logged_jobs(url: str, base: Path) -> dict[str, str]:
    """A run of the two jobs, ended: the job id of each."""
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    http.post("/api/v1/tenants", json={"id": "bench"}).raise_for_status()
    repo = GitRepo(base / "repo")
    workflow = "jobs:\n" + "".join(f"  - name: job{n}\n    run: |\n      {run}\n"
                                   for n, run in enumerate(JOBS.values()))
    commit = repo.commit({".ledgerci.yml": workflow})
    http.post("/api/v1/repositories", json={"id": "bench", "tenant_id": "bench",
                                             "clone_url": repo.clone_url}).raise_for_status()
    pushed = http.post("/api/v1/push", json={"repository_id": "bench", "commit": commit, "ref": "refs/heads/main"})
    run_id = pushed.raise_for_status().json()["run_id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        answer = http.get(f"/api/v1/runs/{run_id}")
        run = answer.json() if answer.status_code == 200 else {}  # 404 until the read model has it
        if run.get("status") in ("succeeded", "failed"):
            assert run["status"] == "succeeded", run
            sizes = [int(http.get(f"/api/v1/jobs/{job['id']}/log").headers["x-log-size"]) for job in run["jobs"]]
            print(f"  logs of {sizes} bytes", file=sys.stderr)
            return {name: job["id"] for name, job in zip(JOBS, run["jobs"], strict=True)}
        time.sleep(0.5)  # waiting for the jobs, not measured
    raise TimeoutError("the run did not end")


def time_to_click(page: Page, url: str, limit: float) -> float | None:
    """Seconds from navigating to `url` to the page handling a click on the log; None past `limit`."""
    page.goto("about:blank")
    started = time.monotonic()
    try:
        page.goto(url, timeout=limit * 1000)
        page.wait_for_selector('#connection[data-state="ended"]', state="attached", timeout=limit * 1000)
        page.click(".log", timeout=limit * 1000)
        page.wait_for_function(ANSWERED, timeout=limit * 1000)
    except PlaywrightError:
        return None
    return time.monotonic() - started


def measure(source: Path, repeat: int, limit: float) -> dict[str, list[float | None]]:
    base = Path(tempfile.mkdtemp(prefix="ledgerci-bench-dashboard-"))
    port = free_port()
    log = open(base / "dev.log", "wb")  # noqa: SIM115
    env = {**os.environ, "LEDGERCI_ADMIN_TOKEN": TOKEN, "LEDGERCI_LOG_LEVEL": "WARNING", "PYTHONPATH": str(source)}
    dev = subprocess.Popen([sys.executable, "-m", "ledgerci.cli", "dev", "--data-dir", str(base / "data"),
                            "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=source)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, dev)
        jobs = logged_jobs(url, base)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{url}/")
            page.evaluate("token => localStorage.setItem('ledgerci.token', token)", TOKEN)
            times: dict[str, list[float | None]] = {}
            for name, job_id in jobs.items():
                times[name] = []
                for _ in range(repeat):
                    seconds = time_to_click(page, f"{url}/#/jobs/{job_id}", limit)
                    times[name].append(seconds)
                    print(f"  {source}: {name}: {_seconds([seconds], limit)}", file=sys.stderr)
                    if seconds is None:
                        break  # once is enough to know; the page may never come back
            browser.close()
        return times
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dev.kill()
        log.close()


def _seconds(values: list[float | None], limit: float) -> str:
    """The median, and the range when there are several; "> limit" when one did not answer."""
    answered = [value for value in values if value is not None]
    if len(answered) < len(values):
        return f"> {limit:.0f} s"
    spread = f" ({min(answered):.2f} to {max(answered):.2f})" if len(answered) > 1 else ""
    return f"{statistics.median(answered):.2f} s{spread}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, action="append",
                        help="a ledgerci checkout whose dashboard to measure (repeat to compare; default: this one)")
    parser.add_argument("--repeat", type=int, default=3, help="page loads per log (the median is shown)")
    parser.add_argument("--limit", type=float, default=300, help="seconds to wait for a page before giving up")
    args = parser.parse_args()
    sources = [source.absolute() for source in args.source or [Path.cwd()]]
    results = {source: measure(source, args.repeat, args.limit) for source in sources}

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}\n")
    print("| navigation → the page answers a click | " + " | ".join(str(s) for s in sources) + " |")
    print("| --- |" + " --- |" * len(sources))
    for name in JOBS:
        print(f"| {name} | " + " | ".join(_seconds(results[s][name], args.limit) for s in sources) + " |")


if __name__ == "__main__":
    main()
