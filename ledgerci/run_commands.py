"""`ledgerci push|runs|run|logs|events|cancel|rerun|audit verify`: runs, through a gateway.

Exit codes: 0 done (for `run`: the run succeeded, or has not ended); 1 the gateway refused or
could not be reached (the reason on stderr, with the field at fault); 2 a usage error; for
`run`: 3 failed, 4 cancelled, 5 skipped."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

from domain.status import RunStatus
from ledgerci.client import ClientError, GatewayClient, add_client_options
from ledgerci.printing import (
    RUN_EXIT_CODES,
    describe_end,
    note,
    print_events,
    print_json,
    print_run,
    print_runs,
    print_table,
)

_COMMIT = re.compile(r"^[0-9a-fA-F]{40}$")
FINAL = ("succeeded", "failed", "cancelled", "skipped")


def add_run_commands(commands: Any) -> None:
    def client(name: str, help_text: str, handler: Callable[[argparse.Namespace], int], *,
               json_output: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_client_options(sub, json_output=json_output)
        sub.set_defaults(handler=handler)
        return sub

    push = client("push", "report a push: a run of the commit (the same commit again: the same run; "
                          "a tag's push is a run of its own)", _push)
    push.add_argument("--repo", required=True, help="the repository's id, as registered with `repo add`")
    push.add_argument("--commit", required=True, help="the full 40-hex commit SHA, e.g. $(git rev-parse HEAD)")
    push.add_argument("--ref", help="the pushed ref, e.g. refs/heads/main (what on.branches matches)")

    runs = client("runs", "list runs, newest first", _runs)
    runs.add_argument("--repo", help="only this repository's runs")
    runs.add_argument("--status", choices=[s.value for s in RunStatus], help="only runs in this state")
    runs.add_argument("--limit", type=int, default=20, help="at most this many (1 to 500; default 20)")
    runs.add_argument("--cursor", help="the next page, as printed at the end of the previous one")

    run = client("run", "show a run; exit code 0 succeeded (or not ended), 3 failed, 4 cancelled, 5 skipped",
                 _run)
    run.add_argument("run_id")
    # One or the other: --watch follows the run now, --as-of shows its past (both: a usage error).
    when = run.add_mutually_exclusive_group()
    when.add_argument("--watch", action="store_true", help="follow the run live, a line per change, until it ends")
    when.add_argument("--as-of", metavar="VERSION|TIME",
                     help="the run as it was at one of its versions, or at an RFC 3339 time (replayed)")

    logs = client("logs", "print a job's log (its closing line goes to stderr)", _logs, json_output=False)
    logs.add_argument("job_id")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="follow the log live until the job ends (with --attempt: until that attempt ends)")
    logs.add_argument("--attempt", type=int, help="an earlier attempt's log (default: the current one)")

    events = client("events", "a run's event history, from the event store", _events)
    events.add_argument("run_id")
    events.add_argument("--job", metavar="NAME|ID", help="only this job's events (its name or its id)")
    events.add_argument("--type", help="only events of this type, e.g. JobStarted")

    cancel = client("cancel", "cancel a run: queued jobs cancelled, the running one stopped at once", _cancel)
    cancel.add_argument("run_id")

    rerun = client("rerun", "a new run of the same commit", _rerun)
    rerun.add_argument("run_id")


def _client(args: argparse.Namespace) -> GatewayClient:
    return GatewayClient(args.url, args.token)


def _push(args: argparse.Namespace) -> int:
    if not _COMMIT.match(args.commit):
        raise ClientError(f"--commit {args.commit!r} is not a commit SHA: give all 40 hex digits, "
                          "e.g. --commit $(git rev-parse HEAD)")
    body = {"repository_id": args.repo, "commit": args.commit}
    if args.ref:
        body["ref"] = args.ref
    result = _client(args).json("POST", "/api/v1/push", json=body)
    if args.json:
        print_json(result)
    else:
        print(f"{result['run_id']}{'  (duplicate: the run of this push)' if result['duplicate'] else ''}")
    return 0


def _runs(args: argparse.Namespace) -> int:
    params = {k: v for k, v in {"repository_id": args.repo, "status": args.status, "limit": args.limit,
                                "cursor": args.cursor}.items() if v is not None}
    page = _client(args).json("GET", "/api/v1/runs", params=params)
    print_json(page) if args.json else print_runs(page)
    return 0


def _run(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.watch:
        run = client.watch_run(args.run_id, quiet=args.json)
    else:
        params = {"as_of": args.as_of} if args.as_of else {}
        run = client.json("GET", f"/api/v1/runs/{args.run_id}", params=params)
    print_json(run) if args.json else print_run(run)
    return RUN_EXIT_CODES.get(run["status"], 0)


def _logs(args: argparse.Namespace) -> int:
    end = _client(args).follow_log(args.job_id, follow=args.follow, attempt=args.attempt)
    if end.get("status") in FINAL or end.get("status") == "abandoned":
        note(describe_end(end))
    return 0


def _events(args: argparse.Namespace) -> int:
    params = {k: v for k, v in {"job_id": args.job, "type": args.type}.items() if v}
    history = _client(args).json("GET", f"/api/v1/runs/{args.run_id}/events", params=params)
    print_json(history) if args.json else print_events(history["events"])
    return 0


def _cancel(args: argparse.Namespace) -> int:
    result = _client(args).json("POST", f"/api/v1/runs/{args.run_id}/cancel")
    if args.json:
        print_json(result)
    elif result["cancelled"]:
        print(f"run {result['run_id']}: cancelled")
    else:
        print(f"run {result['run_id']} had already ended ({result['status']}): nothing was cancelled")
    # Cancelling a run that is cancelled already is done; one that succeeded or failed was not.
    return 0 if result["status"] == "cancelled" else 1


def _rerun(args: argparse.Namespace) -> int:
    result = _client(args).json("POST", f"/api/v1/runs/{args.run_id}/rerun")
    print_json(result) if args.json else print(f"{result['run_id']}  (re-run {result['rerun']})")
    return 0


def verify_through_gateway(args: argparse.Namespace) -> int:
    """`ledgerci audit verify`: the gateway recomputes the chain (it holds the key)."""
    path = "/api/v1/audit" if args.all else f"/api/v1/runs/{args.run_id}/audit"
    report = _client(args).json("GET", path)
    if args.json:
        print_json(report)
    else:
        if report["broken"]:
            print_table(("BROKEN STREAM", "VERSION", "TYPE", "REASON"),
                        [(b["aggregate_id"], b["version"], b["type"], b["reason"]) for b in report["broken"]])
        what = "every stream" if args.all else f"run {args.run_id}"
        print(f"{what}: {report['checked']} events checked in {report['seconds']:.1f}s, "
              f"{len(report['broken'])} broken stream(s)" + ("" if report["broken"] else ", every chain intact"))
    return 0 if report["intact"] else 1
