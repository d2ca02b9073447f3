"""`ledgerci artifacts RUN [--download DIR]`: the files a run's jobs left, listed or fetched,
each checked against the SHA-256 the run recorded."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ledgerci.client import ClientError, GatewayClient, add_client_options
from ledgerci.printing import print_json, print_table


def add_artifact_commands(commands: Any) -> None:
    help_text = "list the files a run's jobs left, or download them (checked against their SHA-256)"
    sub = commands.add_parser("artifacts", help=help_text, description=help_text)
    add_client_options(sub)
    sub.set_defaults(handler=_artifacts)
    sub.add_argument("run_id")
    sub.add_argument("--download", metavar="DIR", help="write each to DIR/<job>/<path>")


def _artifacts(args: argparse.Namespace) -> int:
    client = GatewayClient(args.url, args.token)
    listed = client.json("GET", f"/api/v1/runs/{args.run_id}/artifacts")
    if args.download:
        for artifact in listed["artifacts"]:
            target = _download(client, args.run_id, artifact, Path(args.download))
            print(f"{target}  {artifact['size']} bytes, sha256 {artifact['sha256']}")
        return 0
    if args.json:
        print_json(listed)
    elif listed["artifacts"]:
        print_table(("ARTIFACT", "SIZE", "SHA256", "EXPIRES"),
                    [(a["name"], str(a["size"]), a["sha256"][:16], a["expires_at"]) for a in listed["artifacts"]])
    else:
        print(f"run {args.run_id} has no artifacts: a job lists them under `artifacts: {{paths: [...]}}`")
    return 0


def _download(client: GatewayClient, run_id: str, artifact: dict, directory: Path) -> Path:
    target = directory / artifact["name"]
    if not target.resolve().is_relative_to(directory.resolve()):
        raise ClientError(f"artifact {artifact['name']!r} would be written outside {directory}")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    partial = target.with_name(target.name + ".part")
    with client.http.stream("GET", f"/api/v1/runs/{run_id}/artifacts/{quote(artifact['name'], safe='/')}") as answer:
        if answer.status_code != 200:
            answer.read()
            raise ClientError(f"{answer.status_code}: {artifact['name']}: {answer.text}")
        with open(partial, "wb") as file:
            for chunk in answer.iter_bytes():
                digest.update(chunk)
                file.write(chunk)
    if digest.hexdigest() != artifact["sha256"]:
        partial.unlink()
        raise ClientError(f"{artifact['name']}: downloaded SHA-256 {digest.hexdigest()} is not the recorded "
                          f"{artifact['sha256']}")
    partial.replace(target)
    return target
