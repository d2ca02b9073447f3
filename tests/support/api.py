"""A small HTTP client for tests, speaking the API of API.md."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

FINAL = {"succeeded", "failed", "cancelled", "skipped"}


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def as_token(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def tenant(self, tenant_id: str | None = None) -> tuple[str, str]:
        """A new tenant and a token of its own."""
        tenant_id = tenant_id or f"t-{uuid.uuid4().hex[:8]}"
        self.http.post("/api/v1/tenants", json={"id": tenant_id}).raise_for_status()
        token = self.http.post(f"/api/v1/tenants/{tenant_id}/tokens").json()["token"]
        return tenant_id, token

    def repository(self, tenant_id: str, clone_url: str, repository_id: str | None = None) -> str:
        repository_id = repository_id or f"r-{uuid.uuid4().hex[:8]}"
        body = {"id": repository_id, "tenant_id": tenant_id, "clone_url": clone_url}
        self.http.post("/api/v1/repositories", json=body).raise_for_status()
        return repository_id

    def push(self, repository_id: str, commit: str, ref: str | None = "refs/heads/main") -> httpx.Response:
        body: dict[str, Any] = {"repository_id": repository_id, "commit": commit}
        if ref:
            body["ref"] = ref
        return self.http.post("/api/v1/push", json=body)

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/v1/runs/{run_id}")
        response.raise_for_status()
        return response.json()

    def wait_run(self, run_id: str, until: Callable[[dict[str, Any]], bool] | None = None,
                 timeout: float = 60.0) -> dict[str, Any]:
        """Poll the read model until `until(run)` holds (by default: the run ended)."""
        until = until or (lambda run: run["status"] in FINAL)
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            response = self.http.get(f"/api/v1/runs/{run_id}")
            if response.status_code == 200:
                last = response.json()
                if until(last):
                    return last
            time.sleep(0.05)
        raise TimeoutError(f"run {run_id} did not get there in {timeout}s; last seen: {last}")

    def log(self, job_id: str) -> str:
        response = self.http.get(f"/api/v1/jobs/{job_id}/log")
        response.raise_for_status()
        return response.text

    def events(self, run_id: str) -> list[dict[str, Any]]:
        response = self.http.get(f"/api/v1/runs/{run_id}/events")
        response.raise_for_status()
        return response.json()["events"]

    def explain(self, run_id: str) -> str:
        """A run's history in one line an event, and the log of each failed job: what an
        assertion about a run's outcome should print when it does not hold."""
        lines = []
        for event in self.events(run_id):
            data = {k: v for k, v in event["data"].items() if k in ("job_id", "attempt", "error", "exit_code",
                                                                    "reason", "runner_id")}
            lines.append(f"{event['type']} by {event['actor']}: {data}")
            if event["type"] == "JobFailed":
                log = self.http.get(f"/api/v1/jobs/{event['data']['job_id']}/log").text
                lines.append("  log: " + log[-2000:].replace("\n", "\n       "))
        return "\n".join(lines)
