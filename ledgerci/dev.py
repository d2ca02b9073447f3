"""`ledgerci dev`: the whole system in one process tree, on embedded defaults."""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ledgerci.client import GatewayClient
from ledgerci.embedded_nats import EmbeddedNats
from ledgerci.process import configure_logging, run_until_signalled
from ledgerci.settings import Settings
from sealing import Keyring

DEMO_WORKFLOW = """\
name: demo
env:
  GREETING: hello
jobs:
  - name: build
    run: |
      echo "$GREETING from $LEDGERCI_JOB_NAME at $LEDGERCI_COMMIT"
      ls -la
  - name: test
    run: |
      for i in 1 2 3; do echo "test $i ok"; done
  - name: report
    when: always
    run: echo "run $LEDGERCI_RUN_ID done"
"""


def run_dev(args: argparse.Namespace) -> int:
    if busy := _port_in_use(args.host, args.port):
        print(f"ledgerci dev: cannot listen on {args.host}:{args.port}: {busy}. Another ledgerci dev? "
              "Choose another port: ledgerci dev --port 8081 (make dev PORT=8081)", file=sys.stderr)
        return 1
    data_dir = Path(args.data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.executor == "docker" and not _docker_answers():
        print("ledgerci dev: --executor docker needs a Docker engine that answers (is dockerd running?)",
              file=sys.stderr)
        return 1
    admin_token = os.environ.get("LEDGERCI_ADMIN_TOKEN") or _kept(
        data_dir / "admin-token", lambda: f"lci_admin_{secrets.token_urlsafe(24)}")
    # The dev store's secrets stay readable across restarts only under the same key.
    secret_key = os.environ.get("LEDGERCI_SECRET_KEY") or _kept(data_dir / "secret-key", Keyring.generate_key)
    embedded = EmbeddedNats(data_dir / "nats")
    embedded.start()
    settings = replace(
        Settings.from_env(),
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'ledgerci.db'}",
        nats_url=embedded.url,
        admin_token=admin_token,
        secret_key=secret_key,
        host=args.host,
        port=args.port,
        executor=args.executor,
    )
    configure_logging(settings)
    url = f"http://{settings.host}:{settings.port}"

    def on_ready() -> None:
        print(f"\nledgerci is running: {url}  (API {url}/api/v1, OpenAPI {url}/schema)")
        print(f"admin token: {admin_token}")
        print(f"  export LEDGERCI_URL={url} LEDGERCI_TOKEN={admin_token}")
        if args.demo:
            threading.Thread(target=_demo, args=(url, admin_token, data_dir), daemon=True).start()
        print("Ctrl-C stops everything.\n", flush=True)

    from ledgerci.services import run_all

    try:
        return run_until_signalled(lambda stop: run_all(settings, stop, on_ready))
    except KeyboardInterrupt:
        return 130
    finally:
        embedded.stop()


def _port_in_use(host: str, port: int) -> str | None:
    """Why the gateway could not listen there, found before anything starts (else the error
    came half-way through start-up, under a long traceback)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as failed:
            return failed.strerror or str(failed)
    return None


def _docker_answers() -> bool:
    import docker  # only `--executor docker` needs it

    try:
        client = docker.from_env()
        try:
            return bool(client.ping())
        finally:
            client.close()
    except docker.errors.DockerException:
        return False


def _kept(path: Path, make: Callable[[], str]) -> str:
    """A generated token or key, kept in the data dir so a restart keeps it; only its owner
    may read the file, from the moment it exists."""
    if path.exists():
        return path.read_text().strip()
    value = make()
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(value)
    return value


def _demo(url: str, admin_token: str, data_dir: Path) -> None:
    """A demo tenant and repository, and one push to it."""
    repo = data_dir / "demo-repo"
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        (repo / ".ledgerci.yml").write_text(DEMO_WORKFLOW)
        (repo / "README.md").write_text("A repository made by `ledgerci dev --demo`.\n")
        git = ["git", "-C", str(repo), "-c", "user.name=ledgerci", "-c", "user.email=dev@ledgerci.invalid"]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "demo"], check=True)
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    client = GatewayClient(url, admin_token)
    if client.http.get("/api/v1/runs", params={"limit": 1}).status_code == 200:
        client.http.post("/api/v1/tenants", json={"id": "demo", "name": "Demo"})
        client.http.post("/api/v1/repositories",
                         json={"id": "demo", "tenant_id": "demo", "clone_url": f"file://{repo}"})
    pushed = client.json("POST", "/api/v1/push",
                         json={"repository_id": "demo", "commit": commit, "ref": "refs/heads/main"})
    print(f"demo: pushed {commit[:12]} to repository 'demo': run {pushed['run_id']}")
    print(f"  ledgerci run {pushed['run_id']} --watch", flush=True)


