"""Schedules end to end (issue 19): a schedule every minute, two scheduler replicas, one of them
SIGKILLed for a while: every nominal time fires exactly once (read from the event history),
over more than three minutes of schedule time. The services run with
LEDGERCI_SCHEDULE_CLOCK_SPEED=20, so a cron minute passes in 3 seconds of wall time (every
replica computes the same minutes from the same anchor). Every service a process of its own on
PostgreSQL and a real nats-server; the invariant checker over the whole history at the end."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.test_cli import Cli
from tests.e2e.test_dashboard import sign_in
from tests.e2e.test_faults import assert_invariants, wait_for
from tests.support.api import Api
from tests.support.cluster import ADMIN_TOKEN, LedgerCluster
from tests.support.git_repo import GitRepo

pytestmark = pytest.mark.e2e

SPEED = 20  # a schedule minute is 3 wall seconds
EVERY_MINUTE = 'on:\n  schedule:\n    - cron: "* * * * *"\njobs:\n  - name: tick\n    run: echo tick\n'


def fired(admin: Api, repository_id: str) -> list[tuple[datetime, str]]:
    """(nominal time, run) of every firing, from the runs' histories."""
    runs = admin.http.get("/api/v1/runs", params={"repository_id": repository_id, "limit": 500}).json()["runs"]
    times = []
    for run in runs:
        for event in admin.events(run["id"]):
            if event["type"] == "RunScheduled":
                times.append((datetime.fromisoformat(event["data"]["nominal_at"].replace("Z", "+00:00")), run["id"]))
    return sorted(times)


def test_every_nominal_minute_fires_once_with_two_schedulers_and_one_killed(
        tmp_path: Path, postgres_url: str, fresh_nats_server, browser: Browser) -> None:
    cluster = LedgerCluster(tmp_path / "cluster", postgres_url, fresh_nats_server.url,
                            extra_env={"LEDGERCI_SCHEDULE_CLOCK_SPEED": str(SPEED)})
    with cluster.running(("relay", "projector", "scheduler", "scheduler#2", "reaper", "gateway", "runner")):
        admin = Api(cluster.url, ADMIN_TOKEN)
        repo = GitRepo(tmp_path / "repo")
        tenant_id, _ = admin.tenant()
        repository_id = admin.repository(tenant_id, repo.clone_url)
        declaring = admin.push(repository_id, repo.commit({".ledgerci.yml": EVERY_MINUTE})).json()["run_id"]
        assert admin.wait_run(declaring)["status"] == "succeeded"

        wait_for(lambda: len(fired(admin, repository_id)) >= 2, 30, "two firings")
        cluster.kill("scheduler")  # the first one started: it leads admission too
        killed_at = fired(admin, repository_id)[-1][0]
        wait_for(lambda: fired(admin, repository_id)[-1][0] >= killed_at + timedelta(minutes=3), 30,
                 "three more minutes fired by the other scheduler alone")
        cluster.start("scheduler")
        wait_for(lambda: len(fired(admin, repository_id)) >= 8, 40, "eight firings")

        listed = admin.http.get(f"/api/v1/repositories/{repository_id}/schedules").json()["schedules"]
        assert [(s["branch"], s["cron"]) for s in listed] == [("main", "* * * * *")]
        assert listed[0]["last_firings"] and listed[0]["next_at"] > listed[0]["last_firings"][0]["created_at"]
        # The dashboard's runs page of the repository shows the schedule and links its firings.
        page = browser.new_page()
        sign_in(page, cluster.url, ADMIN_TOKEN)
        page.goto(f"{cluster.url}/#/?repository={repository_id}")
        row = page.locator('section.schedules tr[data-schedule="* * * * *"]')
        expect(row).to_be_visible()
        expect(row.locator("a.firing").first).to_have_attribute("href", re.compile(r"^#/runs/"))
        page.close()
        # And the command line.
        shown = Cli(cluster.url, ADMIN_TOKEN, tmp_path)("repo", "schedules", repository_id)
        assert shown.returncode == 0, shown.stderr
        assert "* * * * *" in shown.stdout and ":succeeded" in shown.stdout, shown.stdout
        _, stranger = admin.tenant()
        assert Api(cluster.url, stranger).http.get(
            f"/api/v1/repositories/{repository_id}/schedules").status_code == 404

        # A newer push without the schedule ends it.
        admin.push(repository_id, repo.commit({".ledgerci.yml": "jobs:\n  - name: a\n    run: 'true'\n"}))
        wait_for(lambda: admin.http.get(f"/api/v1/repositories/{repository_id}/schedules").json()["schedules"] == [],
                 30, "the schedule to end")

        times = fired(admin, repository_id)
        nominal = [time for time, _ in times]
        assert len(set(nominal)) == len(nominal), f"a nominal time fired twice: {nominal}"
        assert nominal == [nominal[0] + timedelta(minutes=i) for i in range(len(nominal))], \
            f"a nominal minute was skipped: {nominal}"
        assert nominal[-1] - nominal[0] >= timedelta(minutes=3)
        for _, run_id in times:
            assert admin.wait_run(run_id, timeout=60)["status"] == "succeeded", admin.explain(run_id)
        assert_invariants(cluster)
