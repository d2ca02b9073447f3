"""`ledgerci`: run the services, or talk to a gateway. See `ledgerci --help`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from uuid import UUID

from ledgerci.client import (
    ClientError,
    GatewayClient,
    print_events,
    print_json,
    print_run,
    print_runs,
)
from ledgerci.secret_commands import add_secret_commands
from ledgerci.settings import Settings

SERVICES = ("gateway", "relay", "projector", "scheduler", "reaper", "runner")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except ClientError as failed:
        print(f"ledgerci: {failed}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledgerci", description="Event-sourced CI/CD.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    dev = commands.add_parser("dev", help="run everything on this machine (embedded NATS, SQLite)")
    dev.add_argument("--data-dir", default=".ledgerci", help="where the store, NATS and workspaces live")
    dev.add_argument("--port", type=int, default=8080, help="the gateway's port")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--executor", choices=["local", "docker"], default="local")
    dev.add_argument("--demo", action="store_true", help="add a demo tenant and repository, and push")
    dev.set_defaults(handler=_dev)

    for name in SERVICES:
        service = commands.add_parser(name, help=f"run the {name} service (settings from the environment)")
        if name == "gateway":
            service.add_argument("--host")
            service.add_argument("--port", type=int)
        service.set_defaults(handler=_service, service=name)

    migrate = commands.add_parser("migrate", help="create the tables and streams, then exit")
    migrate.add_argument("--grant", metavar="ROLE",
                         help="PostgreSQL: let ROLE (the services' own) read and append events, never change them")
    migrate.set_defaults(handler=_migrate)

    audit = commands.add_parser("audit", help="the event history as evidence").add_subparsers(metavar="ACTION")
    verify = audit.add_parser("verify", help="recompute the tamper-evident chain; name the first event that breaks it")
    which = verify.add_mutually_exclusive_group(required=True)
    which.add_argument("run_id", nargs="?", help="one run's stream")
    which.add_argument("--all", action="store_true", help="every stream in the store")
    verify.set_defaults(handler=_audit_verify)

    projections = commands.add_parser("projections", help="read models").add_subparsers(metavar="ACTION")
    rebuild = projections.add_parser("rebuild", help="rebuild the read models from the whole history")
    rebuild.add_argument("--verify", action="store_true",
                         help="only compare the live read models with a rebuild, and list each difference")
    rebuild.set_defaults(handler=_rebuild)

    def client(name: str, help_text: str, handler: Callable) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--url", help="gateway URL (LEDGERCI_URL)")
        sub.add_argument("--token", help="bearer token (LEDGERCI_TOKEN, else LEDGERCI_ADMIN_TOKEN)")
        sub.add_argument("--json", action="store_true", help="print JSON")
        sub.set_defaults(handler=handler)
        return sub

    push = client("push", "report a push", _push)
    push.add_argument("--repo", required=True)
    push.add_argument("--commit", required=True)
    push.add_argument("--ref")

    runs = client("runs", "list runs", _runs)
    runs.add_argument("--repo")
    runs.add_argument("--status")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--cursor")

    run = client("run", "show a run", _run)
    run.add_argument("run_id")
    run.add_argument("--watch", action="store_true", help="follow the run live until it ends")
    run.add_argument("--as-of", help="the run as it was at a version number or an RFC 3339 time")

    logs = client("logs", "print a job's log", _logs)
    logs.add_argument("job_id")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")

    events = client("events", "a run's event history", _events)
    events.add_argument("run_id")
    events.add_argument("--job", help="only this job's events")
    events.add_argument("--type", help="only events of this type, e.g. JobStarted")

    cancel = client("cancel", "cancel a run (its running job is stopped)", _cancel)
    cancel.add_argument("run_id")

    rerun = client("rerun", "a new run of the same commit", _rerun)
    rerun.add_argument("run_id")

    tenant = commands.add_parser("tenant", help="tenants (admin)").add_subparsers(metavar="ACTION")

    def tenant_action(name: str, help_text: str, handler: Callable) -> argparse.ArgumentParser:
        sub = tenant.add_parser(name, help=help_text)
        sub.add_argument("--url", help="gateway URL (LEDGERCI_URL)")
        sub.add_argument("--token", help="the admin token (LEDGERCI_TOKEN, else LEDGERCI_ADMIN_TOKEN)")
        sub.add_argument("--json", action="store_true", help="print JSON")
        sub.add_argument("tenant_id")
        sub.set_defaults(handler=handler)
        return sub

    create = tenant_action("create", "create a tenant", _tenant_create)
    update = tenant_action("update", "change a tenant's name, weight or quotas (recorded as an event)",
                           _tenant_update)
    for action in (create, update):
        action.add_argument("--name")
        action.add_argument("--weight", type=int, help="priority tier: a share of runners in proportion to it")
        action.add_argument("--max-concurrent-jobs", type=int)
        action.add_argument("--max-queued-runs", type=int)
        action.add_argument("--pushes-per-minute", type=int)
    create.add_argument("--token-out", action="store_true", help="also issue a token and print it")
    tenant_action("show", "a tenant's weight and quotas", _tenant_show)
    tenant_action("token", "issue a new token for the tenant (shown once)", _tenant_token)
    revoke = tenant_action("revoke-token", "revoke one of the tenant's tokens", _tenant_revoke_token)
    revoke.add_argument("token_id", help="the token_id printed when the token was issued")

    repo = commands.add_parser("repo", help="repositories").add_subparsers(metavar="ACTION")
    add = repo.add_parser("add", help="register a repository")
    for flag in ("--url", "--token"):
        add.add_argument(flag)
    add.add_argument("--json", action="store_true")
    add.add_argument("repository_id")
    add.add_argument("--tenant", required=True)
    add.add_argument("--clone-url", required=True)
    add.set_defaults(handler=_repo_add)

    add_secret_commands(commands)
    return parser


# ----- services -------------------------------------------------------------------------------

class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "message": record.getMessage(),
                 "process": record.process}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        formatter: logging.Formatter = JsonLogFormatter()
        formatter.converter = time.gmtime  # type: ignore[assignment]
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP call is noise


def run_until_signalled(main_coroutine: Callable[[asyncio.Event], object]) -> int:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main_coroutine(stop)

    asyncio.run(runner())
    return 0


def _service(args: argparse.Namespace) -> int:
    from ledgerci.services import run_service

    settings = Settings.from_env()
    if args.service == "gateway" and (args.host or args.port):
        from dataclasses import replace

        settings = replace(settings, host=args.host or settings.host, port=args.port or settings.port)
    configure_logging(settings)
    return run_until_signalled(lambda stop: run_service(args.service, settings, stop))


def _migrate(args: argparse.Namespace) -> int:
    from ledgerci.services import grant_role, nats_connection, store

    settings = Settings.from_env()

    async def migrate(stop: asyncio.Event) -> None:
        async with store(settings, migrate_schema=True), nats_connection(settings, "ledgerci-migrate"):
            print("schema and streams are ready")
        if args.grant:
            await grant_role(settings, args.grant)
            print(f"role {args.grant} may read and append events, and keep the read models")

    return run_until_signalled(migrate)


def _audit_verify(args: argparse.Namespace) -> int:
    from ledgerci.services import verify_audit_chain

    try:
        run_id = None if args.all else UUID(args.run_id)
    except ValueError:
        print(f"not a run id: {args.run_id!r}", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    outcome: list[int] = []

    async def verify(stop: asyncio.Event) -> None:
        outcome.append(await verify_audit_chain(settings, run_id))

    run_until_signalled(verify)
    return outcome[0] if outcome else 1


def _rebuild(args: argparse.Namespace) -> int:
    from ledgerci.services import rebuild_read_models

    settings = Settings.from_env()
    configure_logging(settings)
    outcome: list[int] = []

    async def rebuild(stop: asyncio.Event) -> None:
        outcome.append(await rebuild_read_models(settings, verify=args.verify))

    run_until_signalled(rebuild)
    return outcome[0] if outcome else 1


def _dev(args: argparse.Namespace) -> int:
    from ledgerci.dev import run_dev

    return run_dev(args)


# ----- client commands ------------------------------------------------------------------------

def _client(args: argparse.Namespace) -> GatewayClient:
    return GatewayClient(args.url, args.token)


def _push(args: argparse.Namespace) -> int:
    body = {"repository_id": args.repo, "commit": args.commit}
    if args.ref:
        body["ref"] = args.ref
    result = _client(args).json("POST", "/api/v1/push", json=body)
    if args.json:
        print_json(result)
    else:
        print(f"{result['run_id']}{'  (duplicate: the run of this commit)' if result['duplicate'] else ''}")
    return 0


def _runs(args: argparse.Namespace) -> int:
    params = {k: v for k, v in {"repository_id": args.repo, "status": args.status, "limit": args.limit,
                                "cursor": args.cursor}.items() if v is not None}
    page = _client(args).json("GET", "/api/v1/runs", params=params)
    print_json(page) if args.json else print_runs(page)
    return 0


def _run(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.watch and not args.as_of:
        run = client.watch_run(args.run_id, quiet=args.json)
    else:
        params = {"as_of": args.as_of} if args.as_of else {}
        run = client.json("GET", f"/api/v1/runs/{args.run_id}", params=params)
    print_json(run) if args.json else print_run(run)
    return 0 if run["status"] != "failed" else 3


def _logs(args: argparse.Namespace) -> int:
    _client(args).follow_log(args.job_id, follow=args.follow)
    return 0


def _events(args: argparse.Namespace) -> int:
    params = {k: v for k, v in {"job_id": args.job, "type": args.type}.items() if v}
    history = _client(args).json("GET", f"/api/v1/runs/{args.run_id}/events", params=params)
    print_json(history) if args.json else print_events(history["events"])
    return 0


def _cancel(args: argparse.Namespace) -> int:
    result = _client(args).json("POST", f"/api/v1/runs/{args.run_id}/cancel")
    print_json(result) if args.json else print(f"run {result['run_id']}: {result['status']}")
    return 0


def _rerun(args: argparse.Namespace) -> int:
    result = _client(args).json("POST", f"/api/v1/runs/{args.run_id}/rerun")
    print_json(result) if args.json else print(f"{result['run_id']}  (re-run {result['rerun']})")
    return 0


_TENANT_SETTINGS = ("name", "weight", "max_concurrent_jobs", "max_queued_runs", "pushes_per_minute")


def _tenant_settings(args: argparse.Namespace) -> dict[str, object]:
    return {name: getattr(args, name) for name in _TENANT_SETTINGS if getattr(args, name) is not None}


def _print_tenant(tenant: dict, args: argparse.Namespace, what: str) -> None:
    if args.json:
        print_json(tenant)
        return
    print(f"tenant {tenant['id']} {what}: weight {tenant['weight']}, at most {tenant['max_concurrent_jobs']} jobs "
          f"running, {tenant['max_queued_runs']} runs queued, {tenant['pushes_per_minute']} pushes a minute")
    if "token" in tenant:
        print(f"token (shown once): {tenant['token']}")
        print(f"token id (to revoke it): {tenant['token_id']}")


def _tenant_create(args: argparse.Namespace) -> int:
    client = _client(args)
    tenant = client.json("POST", "/api/v1/tenants", json={"id": args.tenant_id, **_tenant_settings(args)})
    if args.token_out:
        issued = client.json("POST", f"/api/v1/tenants/{args.tenant_id}/tokens")
        tenant.update(token=issued["token"], token_id=issued["token_id"])
    _print_tenant(tenant, args, "created")
    return 0


def _tenant_update(args: argparse.Namespace) -> int:
    tenant = _client(args).json("PATCH", f"/api/v1/tenants/{args.tenant_id}", json=_tenant_settings(args))
    _print_tenant(tenant, args, "is now")
    return 0


def _tenant_show(args: argparse.Namespace) -> int:
    _print_tenant(_client(args).json("GET", f"/api/v1/tenants/{args.tenant_id}"), args, "has")
    return 0


def _tenant_token(args: argparse.Namespace) -> int:
    issued = _client(args).json("POST", f"/api/v1/tenants/{args.tenant_id}/tokens")
    if args.json:
        print_json(issued)
    else:
        print(f"token (shown once): {issued['token']}")
        print(f"token id (to revoke it): {issued['token_id']}")
    return 0


def _tenant_revoke_token(args: argparse.Namespace) -> int:
    _client(args).call("DELETE", f"/api/v1/tenants/{args.tenant_id}/tokens/{args.token_id}")
    print(f"token {args.token_id} of tenant {args.tenant_id} revoked")
    return 0


def _repo_add(args: argparse.Namespace) -> int:
    body = {"id": args.repository_id, "tenant_id": args.tenant, "clone_url": args.clone_url}
    repository = _client(args).json("POST", "/api/v1/repositories", json=body)
    print_json(repository) if args.json else print(f"repository {repository['id']} added")
    return 0


if __name__ == "__main__":
    sys.exit(main())
