"""A job's log over HTTP: an earlier attempt's log (`?attempt=N`) as text and as a stream, what
an attempt out of range answers, and the headers the dashboard reads (one charset, the run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledgerci import sse
from tests.support.api import Api
from tests.support.git_repo import GitRepo

pytestmark = pytest.mark.e2e

# Attempt 1 prints a line and hangs until its 2-second timeout; the retry prints another and succeeds.
RETRIED = """
jobs:
  - name: flaky
    retries: 1
    timeout: 2s
    run: |
      if [ "$LEDGERCI_ATTEMPT" = 1 ]; then echo "attempt one"; exec sleep 60; fi
      echo "attempt two"
"""


@pytest.fixture
def retried_job(tmp_path: Path, admin: Api) -> tuple[Api, dict]:
    tenant_id, token = admin.tenant()
    repo = GitRepo(tmp_path / "repo")
    commit = repo.commit({".ledgerci.yml": RETRIED})
    tenant = Api(admin.url, token)
    run_id = tenant.push(admin.repository(tenant_id, repo.clone_url), commit).json()["run_id"]
    run = tenant.wait_run(run_id, timeout=60)
    assert run["status"] == "succeeded" and run["jobs"][0]["attempt"] == 2
    return tenant, run["jobs"][0]


def stream(tenant: Api, path: str, last_id: str | None = None) -> tuple[str, dict]:
    """The log text of a whole stream and its `end` message."""
    text, end = "", {}
    for message in sse.follow(tenant.http, path, last_id=last_id, reconnect=False):
        if message.event == "log":
            text += json.loads(message.data)["text"]
        elif message.event == "end":
            end = json.loads(message.data)
    return text, end


def test_an_earlier_attempts_log_is_read_by_its_number(retried_job) -> None:
    tenant, job = retried_job
    path = f"/api/v1/jobs/{job['id']}/log"

    current = tenant.http.get(path)
    assert current.status_code == 200
    assert current.headers["content-type"] == "text/plain; charset=utf-8"  # said once
    assert current.headers["x-job-attempt"] == "2" and current.headers["x-run-id"]
    assert "attempt two" in current.text and "attempt one" not in current.text
    assert tenant.http.get(path, params={"attempt": 2}).text == current.text

    first = tenant.http.get(path, params={"attempt": 1})
    assert first.status_code == 200 and first.headers["x-job-attempt"] == "1"
    assert "attempt one" in first.text and "attempt two" not in first.text
    assert tenant.http.get(path, params={"attempt": 1, "offset": 3}).text == first.text[3:]


def test_an_earlier_attempt_streams_alone_and_ends_saying_why_it_was_abandoned(retried_job) -> None:
    tenant, job = retried_job
    path = f"/api/v1/jobs/{job['id']}/log/stream"

    text, end = stream(tenant, f"{path}?attempt=1")
    assert "attempt one" in text and "attempt two" not in text
    assert end == {"status": "abandoned", "exit_code": None, "error": "timed out"}

    text, end = stream(tenant, f"{path}?attempt=2")
    assert "attempt two" in text and "attempt one" not in text
    assert end["status"] == "succeeded"

    # Resuming within the attempt sends only what follows; an id of another attempt starts it over.
    whole = tenant.http.get(f"/api/v1/jobs/{job['id']}/log", params={"attempt": 1}).text
    assert stream(tenant, f"{path}?attempt=1", last_id="1-4")[0] == whole[4:]
    assert stream(tenant, f"{path}?attempt=1", last_id="2-4")[0] == whole


def test_an_attempt_out_of_range_is_not_found_and_not_a_number_is_invalid(retried_job) -> None:
    tenant, job = retried_job
    for path in (f"/api/v1/jobs/{job['id']}/log", f"/api/v1/jobs/{job['id']}/log/stream"):
        for attempt in (0, 3, -1):
            answer = tenant.http.get(path, params={"attempt": attempt})
            assert answer.status_code == 404, (path, attempt, answer.text)
            assert answer.json()["detail"] == f"job {job['id']} has no attempt {attempt} (it has attempts 1 to 2)"
        answer = tenant.http.get(path, params={"attempt": "first"})
        assert answer.status_code == 422, (path, answer.text)
