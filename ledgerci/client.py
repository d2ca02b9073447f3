"""The command line's client side: talks to a gateway over HTTP, nothing else."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import httpx

from ledgerci import sse
from ledgerci.printing import describe_change, note
from ledgerci.sse import SseMessage


class ClientError(Exception):
    pass


def add_client_options(parser: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    """The options of every command that talks to a gateway."""
    parser.add_argument("--url", help="the gateway's URL (default: LEDGERCI_URL, else http://127.0.0.1:8080)")
    parser.add_argument("--token", help="a bearer token (default: LEDGERCI_TOKEN, else LEDGERCI_ADMIN_TOKEN)")
    if json_output:
        parser.add_argument("--json", action="store_true", help="print the gateway's answer as JSON")


def describe_refusal(status_code: int, body: Any) -> str:
    """`422: Validation failed for POST /api/v1/push` and, a line each, which field and why."""
    if not isinstance(body, dict):
        return f"{status_code}: {body}"
    lines = [f"{status_code}: {body.get('detail')}"]
    extra = body.get("extra")
    for problem in extra if isinstance(extra, list) else [extra] if extra else []:
        if isinstance(problem, dict):
            where = " ".join(str(problem[k]) for k in ("source", "key") if problem.get(k))
            lines.append(f"  {where}: {problem.get('message')}" if where else f"  {problem.get('message')}")
        else:
            lines.append(f"  {problem}")
    return "\n".join(lines)


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
                body = response.json()
            except ValueError:
                body = response.text
            raise ClientError(describe_refusal(response.status_code, body))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call(method, path, **kwargs).json()

    def follow_log(self, job_id: str, out=sys.stdout.buffer, follow: bool = True,
                   attempt: int | None = None) -> dict[str, Any]:
        """Print a job's log (its current attempt, or `attempt`); with `follow`, live until the
        job ends (with `attempt`: until that attempt ends). Returns how it ended,
        `{status, exit_code, error}`, as far as known: a log not followed gives the status of
        the attempt shown only (`abandoned` for an earlier one)."""
        query = f"?attempt={attempt}" if attempt is not None else ""
        if not follow:
            response = self.call("GET", f"/api/v1/jobs/{job_id}/log{query}")
            out.write(response.content)
            out.flush()
            return {"status": response.headers.get("X-Attempt-Status", ""),
                    "attempt": int(response.headers.get("X-Job-Attempt", "0"))}
        for message in self._stream(f"/api/v1/jobs/{job_id}/log/stream{query}"):
            if message.event == "log":
                out.write(json.loads(message.data)["text"].encode())
                out.flush()
            elif message.event == "attempt":
                # A retry's log follows the one before: say where one ends and the next begins
                # (beside the log, so the log itself stays as the job wrote it).
                note(f"ledgerci: attempt {json.loads(message.data)['attempt']} of the job begins here")
            elif message.event == "end":
                return json.loads(message.data) | ({"attempt": attempt} if attempt is not None else {})
        return {}

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
        except sse.StreamRefused as refused:
            raise ClientError(describe_refusal(refused.status_code, refused.body)) from None
        except sse.StreamError as failed:
            raise ClientError(str(failed)) from None
