"""`ledgerci tenant …` (admin) and `ledgerci repo …`: who may push, and what, through a gateway."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any
from uuid import UUID

from ledgerci.client import ClientError, GatewayClient, add_client_options
from ledgerci.hook_commands import add_status_target_command
from ledgerci.printing import print_json, print_table
from ledgerci.secret_commands import read_value

Handler = Callable[[argparse.Namespace], int]
_TENANT_SETTINGS = ("name", "weight", "max_concurrent_jobs", "max_queued_runs", "pushes_per_minute",
                    "max_priority", "max_artifact_bytes", "max_cache_bytes", "max_artifact_days")


def add_registry_commands(commands: Any) -> None:
    _add_tenant_commands(commands.add_parser("tenant", help="tenants (admin)").add_subparsers(metavar="ACTION"))
    _add_repo_commands(commands.add_parser("repo", help="repositories").add_subparsers(metavar="ACTION"))


def _action(group: Any, name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
    sub = group.add_parser(name, help=help_text, description=help_text)
    add_client_options(sub)
    sub.set_defaults(handler=handler)
    return sub


def _add_tenant_commands(tenant: Any) -> None:
    def action(name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        sub = _action(tenant, name, help_text, handler)
        sub.add_argument("tenant_id", help="the tenant's id: 1 to 64 of A-Z a-z 0-9 _ . -, from a letter or digit")
        return sub

    _action(tenant, "list", "every tenant, by id", _tenant_list)
    create = action("create", "create a tenant", _tenant_create)
    update = action("update", "change a tenant's name, weight or quotas (recorded as an event)", _tenant_update)
    for sub in (create, update):
        sub.add_argument("--name", help="a display name (default: the id)")
        sub.add_argument("--weight", type=int, help="its share of the runners, in proportion to other tenants' weights")
        sub.add_argument("--max-concurrent-jobs", type=int, help="jobs of the tenant running at once")
        sub.add_argument("--max-queued-runs", type=int, help="runs waiting at once; a push beyond answers 429")
        sub.add_argument("--pushes-per-minute", type=int, help="pushes accepted a minute; beyond, 429")
        sub.add_argument("--pools", metavar="POOL,...",
                         help="the runner pools its jobs may ask for, comma-separated; * for any (the default)")
        sub.add_argument("--max-priority", choices=("high", "normal", "low"),
                         help="the highest `priority` its workflow files get (a file asking more gets this; "
                              "default high)")
        sub.add_argument("--max-artifact-bytes", type=int, help="its stored artifacts at most (default: the "
                                                                "runners' LEDGERCI_ARTIFACT_TENANT_MAX_BYTES)")
        sub.add_argument("--max-cache-bytes", type=int, help="its cache entries at most (default: the runners' "
                                                             "LEDGERCI_CACHE_TENANT_MAX_BYTES)")
        sub.add_argument("--max-artifact-days", type=int, help="the longest expire_in its artifacts get (1 to 90)")
    create.add_argument("--token-out", action="store_true", help="also issue a token and print it (shown once)")
    action("show", "a tenant's weight and quotas", _tenant_show)
    action("token", "issue a new token for the tenant (shown once)", _tenant_token)
    revoke = action("revoke-token", "revoke one of the tenant's tokens", _tenant_revoke_token)
    revoke.add_argument("token_id", help="the token id printed when the token was issued (a UUID)")


def _add_repo_commands(repo: Any) -> None:
    add = _action(repo, "add", "register a repository", _repo_add)
    add.add_argument("repository_id", help="the repository's id (what `push --repo` names)")
    add.add_argument("--tenant", required=True, help="the tenant it belongs to")
    add.add_argument("--clone-url", required=True,
                     help="where the services fetch it: https://…, ssh://…, user@host:path, "
                          "or file:///absolute/path on the ledgerci machine")
    _action(repo, "list", "the repositories you may push to (the admin: every tenant's)", _repo_list)
    _action(repo, "show", "one repository", _repo_show).add_argument("repository_id")
    _action(repo, "schedules", "a repository's schedules (on.schedule): next time and last firings",
            _repo_schedules).add_argument("repository_id")
    webhook = _action(repo, "webhook", "set the repository's webhook secret (read from standard input) for "
                      "deliveries from GitHub, Gitea or GitLab; prints where each host delivers", _repo_webhook)
    webhook.add_argument("repository_id")
    webhook.add_argument("--host-name", help="the host's name of the repository (e.g. org/app): a delivery "
                                             "for another repository is refused")
    webhook.add_argument("--remove", action="store_true", help="stop taking deliveries instead")
    add_status_target_command(repo)
    delete = _action(repo, "delete", "stop taking pushes for a repository (its runs stay)", _repo_delete)
    delete.add_argument("repository_id")


def _client(args: argparse.Namespace) -> GatewayClient:
    return GatewayClient(args.url, args.token)


# ----- tenants --------------------------------------------------------------------------------

def _tenant_settings(args: argparse.Namespace) -> dict[str, object]:
    settings: dict[str, object] = {name: getattr(args, name) for name in _TENANT_SETTINGS
                                   if getattr(args, name) is not None}
    if args.pools is not None:
        settings["pools"] = [pool.strip() for pool in args.pools.split(",") if pool.strip()]
    return settings


def _print_tenant(tenant: dict, args: argparse.Namespace, what: str) -> None:
    if args.json:
        print_json(tenant)
        return
    pools = tenant.get("pools") or ["*"]
    print(f"tenant {tenant['id']} {what}: weight {tenant['weight']}, at most {tenant['max_concurrent_jobs']} jobs "
          f"running, {tenant['max_queued_runs']} runs queued, {tenant['pushes_per_minute']} pushes a minute, "
          f"runner pools: {'any' if '*' in pools else ', '.join(pools)}, "
          f"priority at most {tenant.get('max_priority', 'high')}" + "".join(
              f", {label} {tenant[key]}" for key, label in (("max_artifact_bytes", "artifacts at most (bytes)"),
                                                            ("max_cache_bytes", "caches at most (bytes)"),
                                                            ("max_artifact_days", "artifacts kept at most (days)"))
              if tenant.get(key)))
    if "token" in tenant:
        _print_token(tenant)


def _print_token(issued: dict) -> None:
    print(f"token (shown once): {issued['token']}")
    print(f"token id (to revoke it): {issued['token_id']}")


def _tenant_list(args: argparse.Namespace) -> int:
    listed = _client(args).json("GET", "/api/v1/tenants")
    if args.json:
        print_json(listed)
    elif listed["tenants"]:
        print_table(("TENANT", "NAME", "CREATED"), [(t["id"], t["name"], t["created_at"]) for t in listed["tenants"]])
    else:
        print("no tenants yet: `ledgerci tenant create ID --token-out`")
    return 0


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
    print_json(issued) if args.json else _print_token(issued)
    return 0


def _tenant_revoke_token(args: argparse.Namespace) -> int:
    try:
        UUID(args.token_id)
    except ValueError:
        raise ClientError(f"{args.token_id!r} is not a token id: give the UUID printed as "
                          "'token id' when the token was issued (not the token itself)") from None
    _client(args).call("DELETE", f"/api/v1/tenants/{args.tenant_id}/tokens/{args.token_id}")
    print(f"token {args.token_id} of tenant {args.tenant_id} revoked")
    return 0


# ----- repositories ---------------------------------------------------------------------------

def _print_repository(repository: dict, args: argparse.Namespace, what: str) -> None:
    if args.json:
        print_json(repository)
    else:
        print(f"repository {repository['id']} {what}: tenant {repository['tenant_id']}, "
              f"clone URL {repository['clone_url']}, registered {repository['created_at']}")


def _repo_add(args: argparse.Namespace) -> int:
    body = {"id": args.repository_id, "tenant_id": args.tenant, "clone_url": args.clone_url}
    _print_repository(_client(args).json("POST", "/api/v1/repositories", json=body), args, "added")
    return 0


def _repo_list(args: argparse.Namespace) -> int:
    listed = _client(args).json("GET", "/api/v1/repositories")
    if args.json:
        print_json(listed)
    elif listed["repositories"]:
        print_table(("REPOSITORY", "TENANT", "CLONE URL", "REGISTERED"),
                    [(r["id"], r["tenant_id"], r["clone_url"], r["created_at"]) for r in listed["repositories"]])
    else:
        print("no repositories yet: `ledgerci repo add ID --tenant T --clone-url URL`")
    return 0


def _repo_show(args: argparse.Namespace) -> int:
    _print_repository(_client(args).json("GET", f"/api/v1/repositories/{args.repository_id}"), args, "has")
    return 0


def _repo_schedules(args: argparse.Namespace) -> int:
    listed = _client(args).json("GET", f"/api/v1/repositories/{args.repository_id}/schedules")
    if args.json:
        print_json(listed)
    elif listed["schedules"]:
        print_table(("CRON (UTC)", "BRANCH", "COMMIT", "NEXT", "LAST FIRINGS"),
                    [(s["cron"], s["branch"], s["commit"][:12], s["next_at"],
                      " ".join(f"{f['run_id']}:{f['status']}" for f in s["last_firings"]) or "none yet")
                     for s in listed["schedules"]])
    else:
        print(f"repository {args.repository_id} has no schedules: a push to a branch whose .ledgerci.yml "
              "has on.schedule declares them")
    return 0


def _repo_webhook(args: argparse.Namespace) -> int:
    path = f"/api/v1/repositories/{args.repository_id}/webhook"
    if args.remove:
        _client(args).call("DELETE", path)
        print(f"repository {args.repository_id} takes no webhook deliveries now")
        return 0
    set_ = _client(args).json("PUT", path, json={"secret": read_value(), "host_name": args.host_name})
    if args.json:
        print_json(set_)
        return 0
    print(f"repository {args.repository_id}: webhook secret set" +
          (f" for {set_['host_name']}" if set_["host_name"] else "") + "; the host delivers to the gateway's URL plus:")
    print_table(("HOST", "PATH"), sorted(set_["paths"].items()))
    return 0


def _repo_delete(args: argparse.Namespace) -> int:
    _client(args).call("DELETE", f"/api/v1/repositories/{args.repository_id}")
    print(f"repository {args.repository_id} deleted: no more pushes; its runs stay")
    return 0
