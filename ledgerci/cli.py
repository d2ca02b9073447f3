"""`ledgerci`: run the services, or talk to a gateway. See `ledgerci --help`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from importlib.metadata import version
from uuid import UUID

from ledgerci.artifact_commands import add_artifact_commands
from ledgerci.client import ClientError, add_client_options
from ledgerci.hook_commands import add_hook_commands
from ledgerci.process import configure_logging, run_until_signalled
from ledgerci.registry_commands import add_registry_commands
from ledgerci.run_commands import add_run_commands, verify_through_gateway
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
    parser = argparse.ArgumentParser(
        prog="ledgerci", description="Event-sourced CI/CD. Client commands talk to a gateway "
        "(LEDGERCI_URL, LEDGERCI_TOKEN); see docs/cli.md.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('ledgerci')}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    dev = commands.add_parser("dev", help="run everything on this machine (embedded NATS, SQLite)")
    dev.add_argument("--data-dir", default=".ledgerci", help="where the store, NATS and workspaces live")
    dev.add_argument("--port", type=int, default=8080, help="the gateway's port")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--executor", choices=["local", "docker", "scripted"], default="local",
                     help="scripted: each job's run: played as steps, no process (runner/scripted.py)")
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
    verify = audit.add_parser(
        "verify", help="recompute the tamper-evident chain; name the first event that breaks it",
        description="The gateway recomputes the chain (a tenant: its own runs; the admin: --all too). "
        "With --store, this process reads the event store itself (LEDGERCI_DATABASE_URL, LEDGERCI_AUDIT_KEY).")
    which = verify.add_mutually_exclusive_group(required=True)
    which.add_argument("run_id", nargs="?", help="one run's stream")
    which.add_argument("--all", action="store_true", help="every stream in the store (admin)")
    add_client_options(verify)
    verify.add_argument("--store", action="store_true",
                        help="read the event store directly instead of asking the gateway (operators)")
    verify.set_defaults(handler=_audit_verify)

    projections = commands.add_parser("projections", help="read models").add_subparsers(metavar="ACTION")
    rebuild = projections.add_parser("rebuild", help="rebuild the read models from the whole history")
    rebuild.add_argument("--verify", action="store_true",
                         help="only compare the live read models with a rebuild, and list each difference")
    rebuild.set_defaults(handler=_rebuild)

    add_run_commands(commands)
    add_registry_commands(commands)
    add_secret_commands(commands)
    add_hook_commands(commands)
    add_artifact_commands(commands)
    return parser


# ----- services -------------------------------------------------------------------------------

def _service(args: argparse.Namespace) -> int:
    from ledgerci.services import run_service

    settings = Settings.from_env()
    if args.service == "gateway" and (args.host or args.port):
        from dataclasses import replace

        settings = replace(settings, host=args.host or settings.host, port=args.port or settings.port)
    configure_logging(settings)
    return run_until_signalled(lambda stop: run_service(args.service, settings, stop))


def _migrate(args: argparse.Namespace) -> int:
    from ledgerci.nats_connection import nats_connection
    from ledgerci.resources import store
    from ledgerci.tools import grant_role

    settings = Settings.from_env()

    async def migrate(stop: asyncio.Event) -> None:
        async with store(settings, migrate_schema=True), nats_connection(settings, "ledgerci-migrate"):
            print("schema and streams are ready")
        if args.grant:
            await grant_role(settings, args.grant)
            print(f"role {args.grant} may read and append events, and keep the read models")

    return run_until_signalled(migrate)


def _audit_verify(args: argparse.Namespace) -> int:
    from ledgerci.tools import verify_audit_chain

    try:
        run_id = None if args.all else UUID(args.run_id)
    except ValueError:
        print(f"ledgerci: not a run id: {args.run_id!r}", file=sys.stderr)
        return 2
    if not args.store:
        return verify_through_gateway(args)
    settings = _settings_of_an_existing_store()
    if settings is None:
        return 1
    outcome: list[int] = []

    async def verify(stop: asyncio.Event) -> None:
        outcome.append(await verify_audit_chain(settings, run_id))

    run_until_signalled(verify)
    return outcome[0] if outcome else 1


def _settings_of_an_existing_store() -> Settings | None:
    """The settings, for a tool that works on the store the services keep: None (said on
    stderr) when they name an SQLite file that does not exist, which the tool would otherwise
    create, empty, in whatever directory it was run."""
    settings = Settings.from_env()
    if missing := settings.missing_sqlite_store():
        print(f"ledgerci: no event store at {missing}: set LEDGERCI_DATABASE_URL (or LEDGERCI_DATA_DIR), "
              "or run where `ledgerci dev` keeps its .ledgerci", file=sys.stderr)
        return None
    return settings


def _rebuild(args: argparse.Namespace) -> int:
    from ledgerci.tools import rebuild_read_models

    settings = _settings_of_an_existing_store()
    if settings is None:
        return 1
    configure_logging(settings)
    outcome: list[int] = []

    async def rebuild(stop: asyncio.Event) -> None:
        outcome.append(await rebuild_read_models(settings, verify=args.verify))

    run_until_signalled(rebuild)
    return outcome[0] if outcome else 1


def _dev(args: argparse.Namespace) -> int:
    from ledgerci.dev import run_dev

    return run_dev(args)


if __name__ == "__main__":
    sys.exit(main())
