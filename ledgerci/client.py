"""The command line's client side: talks to a gateway over HTTP, nothing else."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import httpx

FINAL_JOB_STATUSES = {"succeeded", "failed", "cancelled", "skipped"}
FINAL_RUN_STATUSES = {"succeeded", "failed", "cancelled", "skipped"}


class ClientError(Exception):
    pass


class GatewayClient:
    def __init__(self, url: str | None, token: str | None) -> None:
        self.url = (url or os.environ.get("LEDGERCI_URL") or "http://127.0.0.1:8080").rstrip("/")
        token = token or os.environ.get("LEDGERCI_TOKEN") or os.environ.get("LEDGERCI_ADMIN_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as failed:
            raise ClientError(f"cannot reach {self.url}: {failed}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ClientError(f"{response.status_code}: {detail}")
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call(method, path, **kwargs).json()

    def follow_log(self, job_id: str, out=sys.stdout.buffer, follow: bool = True) -> str:
        """Print a job's log; with `follow`, keep printing until the job ends."""
        offset = 0
        delay = 0.1
        while True:
            response = self.call("GET", f"/api/v1/jobs/{job_id}/log", params={"offset": offset})
            if response.content:
                out.write(response.content)
                out.flush()
                offset += len(response.content)
                delay = 0.1
            status = response.headers.get("X-Job-Status", "")
            if not follow or status in FINAL_JOB_STATUSES:
                # One more read: the last chunks may land just after the status changed.
                tail = self.call("GET", f"/api/v1/jobs/{job_id}/log", params={"offset": offset})
                out.write(tail.content)
                out.flush()
                return status
            # The live stream (SSE) arrives with issue 5; until then the CLI polls, backing off.
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def print_run(run: dict[str, Any]) -> None:
    print(f"run {run['id']}  {run['status']}")
    print(f"  repository {run['repository_id']} (tenant {run['tenant_id']})")
    print(f"  commit     {run['commit']}  ref {run.get('ref') or '-'}")
    print(f"  created    {run['created_at']}  finished {run.get('finished_at') or '-'}")
    if run.get("error"):
        print(f"  error      {run['error']}")
    for job in run.get("jobs", []):
        code = "" if job.get("exit_code") is None else f" exit {job['exit_code']}"
        error = f" ({job['error']})" if job.get("error") else ""
        print(f"  - {job['name']:<24} {job['status']:<10} attempt {job['attempt']}{code}{error}  {job['id']}")


def print_runs(page: dict[str, Any]) -> None:
    for run in page["runs"]:
        print(f"{run['id']}  {run['status']:<10} {run['repository_id']:<20} {run['commit'][:12]}  {run['created_at']}")
    if page.get("next_cursor"):
        print(f"(more: --cursor {page['next_cursor']})")


def print_events(events: list[dict[str, Any]]) -> None:
    for event in events:
        data = event["data"]
        job = f" job {data['job_id']} attempt {data['attempt']}" if "job_id" in data else ""
        print(f"{event['version']:>4}  {event['at']}  {event['type']:<16} {event.get('actor') or '-'}{job}")
