"""`ledgerci secret set|list|delete`: a tenant's or a repository's secrets, through a gateway.

A value is read from standard input (or asked for without echo on a terminal), never from the
command line, where `ps` and shell history would show it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from ledgerci.client import GatewayClient, add_client_options
from ledgerci.printing import print_json


def add_secret_commands(commands: Any) -> None:
    """Add `secret set|list|delete` to the command line's subcommands."""
    secret = commands.add_parser("secret", help="secrets of a tenant or a repository").add_subparsers(
        metavar="ACTION")

    def action(name: str, help_text: str, handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        sub = secret.add_parser(name, help=help_text, description=help_text)
        add_client_options(sub)
        owner = sub.add_mutually_exclusive_group(required=True)
        owner.add_argument("--repo", help="a repository's secret (given to its jobs that list it)")
        owner.add_argument("--tenant", help="a tenant's secret (every repository's; a repository's own wins)")
        sub.set_defaults(handler=handler)
        return sub

    action("set", "set a secret; the value is read from standard input", _set).add_argument("name")
    action("list", "list secrets by name (values are never shown)", _list)
    action("delete", "delete a secret", _delete).add_argument("name")


def _path(args: argparse.Namespace, name: str | None = None) -> str:
    owner = f"/api/v1/repositories/{args.repo}" if args.repo else f"/api/v1/tenants/{args.tenant}"
    return f"{owner}/secrets" + (f"/{name}" if name else "")


def _owner(args: argparse.Namespace) -> str:
    return f"repository {args.repo}" if args.repo else f"tenant {args.tenant}"


def read_value(stdin: Any = None) -> str:
    """From a terminal, asked for without echo; from a pipe or file, all of it, less one final
    newline (the one `echo` adds)."""
    stdin = stdin or sys.stdin
    if stdin.isatty():
        return getpass.getpass("value (not echoed): ")
    value = stdin.read()
    return value.removesuffix("\n").removesuffix("\r")


def _set(args: argparse.Namespace) -> int:
    info = GatewayClient(args.url, args.token).json("PUT", _path(args, args.name), json={"value": read_value()})
    print_json(info) if args.json else print(f"secret {info['name']} of {_owner(args)} set")
    return 0


def _list(args: argparse.Namespace) -> int:
    listed = GatewayClient(args.url, args.token).json("GET", _path(args))
    if args.json:
        print_json(listed)
        return 0
    for info in listed["secrets"]:
        print(f"{info['name']:<32} set {info['set_at']} by {info['set_by']}")
    if not listed["secrets"]:
        print(f"{_owner(args)} has no secrets")
    return 0


def _delete(args: argparse.Namespace) -> int:
    GatewayClient(args.url, args.token).call("DELETE", _path(args, args.name))
    print(f"secret {args.name} of {_owner(args)} deleted (if it was set)")
    return 0
