"""`ledgerci webhooks …` (a tenant's outgoing webhooks and their delivery log) and `ledgerci repo
status-target …` (where a repository's commit statuses go): the git host and other systems on
the far end, through a gateway."""

from __future__ import annotations

import argparse
from typing import Any

from ledgerci.client import GatewayClient, add_client_options
from ledgerci.printing import print_json, print_table
from ledgerci.secret_commands import read_value

EVENTS_HELP = ("comma-separated: run.queued, run.started, run.succeeded, run.failed, run.cancelled, run.skipped, "
               "job.started, job.succeeded, job.failed, job.cancelled; or run.*, job.*, *.failed, *")


def add_hook_commands(commands: Any) -> None:
    hooks = commands.add_parser("webhooks", help="outgoing webhooks: tell other systems when runs and jobs change")
    group = hooks.add_subparsers(metavar="ACTION")

    def action(name: str, help_text: str, handler: Any, *, one: bool = False) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help_text, description=help_text)
        add_client_options(sub)
        sub.set_defaults(handler=handler)
        sub.add_argument("--tenant", required=True, help="the tenant whose webhooks these are")
        if one:
            sub.add_argument("subscription_id", help="the subscription's id (a UUID, from `webhooks list`)")
        return sub

    create = action("create", "subscribe a URL to events; prints the signing secret, shown once", _create)
    create.add_argument("receiver", metavar="RECEIVER_URL", help="where deliveries are POSTed (http or https)")
    create.add_argument("--events", required=True, help=EVENTS_HELP)
    create.add_argument("--repo", help="only this repository's runs")
    create.add_argument("--branch", help="only runs of pushes to this branch")
    action("list", "the tenant's subscriptions", _list)
    action("delete", "stop sending to a subscription", _delete, one=True)
    deliveries = action("deliveries", "a subscription's delivery log, newest first", _deliveries, one=True)
    deliveries.add_argument("--limit", type=int, default=50)
    show = action("delivery", "one delivery: its body and every attempt", _delivery, one=True)
    show.add_argument("delivery_id")
    again = action("redeliver", "send a delivery again (the same id)", _redeliver, one=True)
    again.add_argument("delivery_id")


def add_status_target_command(repo: Any) -> None:
    """`ledgerci repo status-target`, beside the other repository actions."""
    help_text = ("send the repository's runs to its git host as commit statuses; the host's API token is read "
                 "from standard input")
    sub = repo.add_parser("status-target", help=help_text, description=help_text)
    add_client_options(sub)
    sub.set_defaults(handler=_status_target)
    sub.add_argument("repository_id")
    sub.add_argument("--kind", choices=("github", "gitea", "gitlab"))
    sub.add_argument("--api-url", help="https://api.github.com, https://gitea.example/api/v1, "
                                       "https://gitlab.example/api/v4")
    sub.add_argument("--project", help="the host's name of the repository, e.g. org/app")
    sub.add_argument("--remove", action="store_true", help="stop sending statuses instead")


def _client(args: argparse.Namespace) -> GatewayClient:
    return GatewayClient(args.url, args.token)


def _base(args: argparse.Namespace) -> str:
    return f"/api/v1/tenants/{args.tenant}/webhooks"


def _one(args: argparse.Namespace) -> str:
    return f"{_base(args)}/{args.subscription_id}"


def _create(args: argparse.Namespace) -> int:
    body = {"url": args.receiver, "events": [e.strip() for e in args.events.split(",") if e.strip()],
            "repository_id": args.repo, "branch": args.branch}
    made = _client(args).json("POST", _base(args), json=body)
    if args.json:
        print_json(made)
        return 0
    subscription = made["subscription"]
    print(f"webhook {subscription['id']} sends {', '.join(subscription['events'])} to {subscription['url']}")
    print(f"signing secret (shown once): {made['secret']}")
    print("each delivery carries X-Ledgerci-Signature: t=<unix>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">")
    return 0


def _list(args: argparse.Namespace) -> int:
    listed = _client(args).json("GET", _base(args))
    if args.json:
        print_json(listed)
    elif listed["subscriptions"]:
        print_table(("WEBHOOK", "URL", "EVENTS", "REPOSITORY", "BRANCH"),
                    [(s["id"], s["url"], ",".join(s["events"]), s["repository_id"] or "any", s["branch"] or "any")
                     for s in listed["subscriptions"]])
    else:
        print(f"tenant {args.tenant} has no webhooks: `ledgerci webhooks create RECEIVER_URL --tenant {args.tenant} "
              "--events run.failed`")
    return 0


def _delete(args: argparse.Namespace) -> int:
    _client(args).call("DELETE", _one(args))
    print(f"webhook {args.subscription_id} deleted: nothing more is sent to it")
    return 0


def _deliveries(args: argparse.Namespace) -> int:
    listed = _client(args).json("GET", f"{_one(args)}/deliveries", params={"limit": args.limit})
    if args.json:
        print_json(listed)
    elif listed["deliveries"]:
        print_table(("DELIVERY", "EVENT", "RUN", "ATTEMPTS", "LAST ANSWER", "STATE"),
                    [(d["id"], d["event"], d["run_id"], str(d["attempts"]), d["last_result"] or "-", _state(d))
                     for d in listed["deliveries"]])
    else:
        print(f"webhook {args.subscription_id} has had nothing to deliver yet")
    return 0


def _state(delivery: dict) -> str:
    if delivery["delivered_at"]:
        return f"delivered {delivery['delivered_at']}"
    return f"next try {delivery['next_at']}" if delivery["next_at"] else "given up (redeliver to try again)"


def _delivery(args: argparse.Namespace) -> int:
    shown = _client(args).json("GET", f"{_one(args)}/deliveries/{args.delivery_id}")
    if args.json:
        print_json(shown)
        return 0
    delivery = shown["delivery"]
    print(f"delivery {delivery['id']}: {delivery['event']} of run {delivery['run_id']}, {_state(delivery)}")
    print_table(("ATTEMPT", "AT", "ANSWER"), [(str(a["attempt"]), a["at"], a["result"]) for a in shown["attempts"]])
    print_json(shown["body"])
    return 0


def _redeliver(args: argparse.Namespace) -> int:
    _client(args).call("POST", f"{_one(args)}/deliveries/{args.delivery_id}/redeliver")
    print(f"delivery {args.delivery_id} will be sent again")
    return 0


def _status_target(args: argparse.Namespace) -> int:
    path = f"/api/v1/repositories/{args.repository_id}/status-target"
    if args.remove:
        _client(args).call("DELETE", path)
        print(f"repository {args.repository_id} sends no commit statuses now")
        return 0
    missing = [f"--{name.replace('_', '-')}" for name in ("kind", "api_url", "project") if not getattr(args, name)]
    if missing:
        raise SystemExit(f"ledgerci repo status-target: {', '.join(missing)} needed (or --remove)")
    target = _client(args).json("PUT", path, json={"kind": args.kind, "api_url": args.api_url,
                                                   "project": args.project, "token": read_value()})
    if args.json:
        print_json(target)
        return 0
    print(f"repository {args.repository_id} sends commit statuses to {target['kind']} {target['api_url']} "
          f"for {target['project']} (context ledgerci/<workflow name>)")
    return 0
