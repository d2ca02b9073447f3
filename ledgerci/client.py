"""The command line's client side: talks to a gateway over HTTP, nothing else."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import httpx

from ledgerci import sse
from ledgerci.sse import SseMessage


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
        """Print a job's log; with `follow`, live until the job ends. Returns the job's status
        (only known for a followed log, which ends with it)."""
        if not follow:
            response = self.call("GET", f"/api/v1/jobs/{job_id}/log")
            out.write(response.content)
            out.flush()
            return response.headers.get("X-Job-Status", "")
        for message in self._stream(f"/api/v1/jobs/{job_id}/log/stream"):
            if message.event == "log":
                out.write(json.loads(message.data)["text"].encode())
                out.flush()
            elif message.event == "end":
                return json.loads(message.data)["status"]
        return ""

    def watch_run(self, run_id: str, quiet: bool = False) -> dict[str, Any]:
        """Follow a run live, a line per change, until it ends; returns the final run."""
        run: dict[str, Any] = {}
        for message in self._stream(f"/api/v1/runs/{run_id}/stream"):
            if message.event == "end":
                break
            change = json.loads(message.data)
            run = change["run"]
            if not quiet:
                print(describe_change(change), flush=True)
        return run

    def _stream(self, path: str) -> Iterator[SseMessage]:
        try:
            yield from sse.follow(self.http, path)
        except sse.StreamError as failed:
            raise ClientError(str(failed)) from None


def describe_change(change: dict[str, Any]) -> str:
    run, event = change["run"], change.get("event")
    if event is None:
        return f"run {run['id']}  {run['status']}"
    job = next((j for j in run["jobs"] if j["id"] == event["data"].get("job_id")), None)
    what = f"job {job['name']} {job['status']}" if job else f"run {run['status']}"
    return f"{event['at']}  {event['type']:<20} {what}"


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
