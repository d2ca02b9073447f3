"""How the command line shows what a gateway answered: aligned tables with a header, a run's
facts, a line per change. JSON output (`--json`) bypasses all of it."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

# A run's exit code for `ledgerci run`, so `ledgerci run R --watch && deploy` deploys only after
# a success. A run that has not ended yet gives 0 (it has not failed).
RUN_EXIT_CODES = {"succeeded": 0, "failed": 3, "cancelled": 4, "skipped": 5}


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Columns as wide as their widest cell; the last one is not padded."""
    cells = [[str(h) for h in headers], *[["-" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers) - 1)]
    for row in cells:
        print("  ".join([cell.ljust(width) for cell, width in zip(row, widths, strict=False)] + [row[-1]]).rstrip())


def short_ref(ref: str | None) -> str:
    return (ref or "-").removeprefix("refs/heads/")


def print_run(run: dict[str, Any]) -> None:
    print(f"run {run['id']}  {run['status']}")
    if "as_of_version" in run:
        latest = "the latest" if run["as_of_version"] == run["latest_version"] else f"now {run['latest_version']}"
        print(f"  history    as of version {run['as_of_version']} ({latest}), recorded {run['as_of_at']}: "
              "the run as it was then")
    print(f"  repository {run['repository_id']} (tenant {run['tenant_id']})")
    print(f"  commit     {run['commit']}  ref {run.get('ref') or '-'}")
    if run.get("commit_subject"):
        print(f"             {run['commit_subject']}  ({run.get('commit_author') or 'unknown author'})")
    print(f"  created    {run['created_at']}  finished {run.get('finished_at') or '-'}")
    if run.get("schedule"):
        print(f"  schedule   {run['schedule']} (for {run['scheduled_for']})")
    if run.get("concurrency_group"):
        print(f"  group      {run['concurrency_group']}")
    if run.get("waiting"):
        print(f"  waiting    {run['waiting']}")
    if run.get("error"):
        print(f"  error      {run['error']}")
    jobs = run.get("jobs", [])
    if jobs:
        print()
        print_table(("JOB", "STATUS", "ATTEMPT", "EXIT", "ID", "ERROR"),
                    [(j["name"], j["status"], j["attempt"], j.get("exit_code"), j["id"], j.get("error") or "")
                     for j in jobs])


def print_runs(page: dict[str, Any]) -> None:
    runs = page["runs"]
    if not runs:
        print("no runs")
        return
    print_table(("RUN", "STATUS", "TENANT", "REPOSITORY", "REF", "COMMIT", "CREATED", "SUBJECT"),
                [(r["id"], r["status"], r["tenant_id"], r["repository_id"], short_ref(r.get("ref")),
                  r["commit"][:12], r["created_at"], (r.get("commit_subject") or "")[:60]) for r in runs])
    if page.get("next_cursor"):
        print(f"(more: --cursor {page['next_cursor']})")


def print_events(events: list[dict[str, Any]]) -> None:
    if not events:
        print("no events match")
        return
    print_table(("VERSION", "AT", "TYPE", "ACTOR", "JOB", "ATTEMPT"),
                [(e["version"], e["at"], e["type"], e.get("actor"), e["data"].get("job_id"), e["data"].get("attempt"))
                 for e in events])


def describe_change(change: dict[str, Any]) -> str:
    run, event = change["run"], change.get("event")
    if event is None:
        return f"run {run['id']}  {run['status']}"
    job = next((j for j in run["jobs"] if j["id"] == event["data"].get("job_id")), None)
    what = f"job {job['name']} {job['status']}" if job else f"run {run['status']}"
    return f"{event['at']}  {event['type']:<20} {what}"


def describe_end(end: dict[str, Any]) -> str:
    """The closing line of a job's log, as the dashboard shows it: `job failed · exit code 1`;
    of an earlier attempt, `attempt 1 abandoned · runner lost`."""
    exit_code = end.get("exit_code")
    how = end.get("error") or (f"exit code {exit_code}" if exit_code is not None else None)
    what = f"attempt {end.get('attempt')}" if end.get("status") == "abandoned" else "job"
    return " · ".join(part for part in (f"{what} {end.get('status')}", how) if part)


def note(text: str) -> None:
    """A line of ours beside the output (stderr), so piping the output keeps only the output."""
    print(text, file=sys.stderr, flush=True)
