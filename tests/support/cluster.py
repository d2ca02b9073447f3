"""Every ledgerci service as a separate process, for end-to-end tests that kill them."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.processes import free_port, without_ledgerci_settings

SERVICES = ("relay", "projector", "scheduler", "reaper", "runner", "gateway")
ADMIN_TOKEN = "test-admin-token"
# 32 fixed bytes: the gateway encrypts secrets with it and the scheduler decrypts them.
SECRET_KEY = "bGVkZ2VyY2ktdGVzdC1zZWNyZXQta2V5LTMyLWJ5dGU="
# A cluster allowed to send commit statuses and outgoing webhooks to loopback (a test's
# receiver), retrying them quickly.
OUTBOUND_TO_LOOPBACK = {"LEDGERCI_OUTBOUND_ALLOW_PRIVATE": "true", "LEDGERCI_STATUS_RETRY_SECONDS": "0.2",
                        "LEDGERCI_WEBHOOK_RETRY_SECONDS": "0.2", "LEDGERCI_IDLE_CHECK_SECONDS": "0.3"}


class LedgerCluster:
    def __init__(self, base_dir: Path, database_url: str, nats_url: str, *, extra_env: dict[str, str] | None = None):
        self.base_dir = base_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **without_ledgerci_settings(),  # every service's settings are the cluster's
            "LEDGERCI_DATABASE_URL": database_url,
            "LEDGERCI_NATS_URL": nats_url,
            "LEDGERCI_ADMIN_TOKEN": ADMIN_TOKEN,
            "LEDGERCI_SECRET_KEY": SECRET_KEY,
            "LEDGERCI_PORT": str(self.port),
            "LEDGERCI_LOG_LEVEL": "INFO",
            # Tests push hundreds of runs a minute; the quota tests give their tenants their own.
            "LEDGERCI_DEFAULT_PUSHES_PER_MINUTE": "100000",
            "LEDGERCI_DEFAULT_MAX_QUEUED_RUNS": "100000",
            **(extra_env or {}),
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        # A starting runner kills every job process on the machine that carries its id
        # (runner/leftovers.py): with tests running side by side, each cluster's runner ids
        # must be its own, or one test's runner would kill another's jobs.
        self.runner_suffix = secrets.token_hex(3)
        self.runner_ids: dict[str, str] = {}  # service name -> the id it was started under

    def runner_id(self, name: str = "runner") -> str:
        """The id runner service `name` (`runner`, `runner#2`) runs under: the one it was given
        (env or extra_env), else `runner-2.<this cluster>`."""
        return self.runner_ids.get(name) or f"{name.replace('#', '-')}.{self.runner_suffix}"

    def runner_service(self, runner_id: str) -> str:
        """The service name of the runner that runs under `runner_id` (runner_id's inverse)."""
        return next(name for name, given in self.runner_ids.items() if given == runner_id)

    def log_path(self, name: str) -> Path:
        return self.base_dir / f"{name}.log"

    def start(self, name: str, *, env: dict[str, str] | None = None,
              wrap: Callable[[list[str]], list[str]] | None = None) -> None:
        """Start service `name` (`runner#2`: a second runner); `wrap` changes how its command
        runs (e.g. inside a network partition, tests/support/partition.py)."""
        data_dir = self.base_dir / name
        data_dir.mkdir(parents=True, exist_ok=True)
        service_env = {**self.env, "LEDGERCI_DATA_DIR": str(data_dir), **(env or {})}
        if name.startswith("gateway#"):  # another gateway replica: a port of its own
            self.ports.setdefault(name, free_port())
            service_env["LEDGERCI_PORT"] = str(self.ports[name])
        if name.startswith("runner"):
            # The runner holds no database credentials: prove it by not giving it any.
            service_env.pop("LEDGERCI_DATABASE_URL", None)
            service_env.pop("LEDGERCI_SECRET_KEY", None)  # nor the key: secrets reach it sealed to its claim
            service_env.setdefault("LEDGERCI_RUNNER_ID", self.runner_id(name))
            self.runner_ids[name] = service_env["LEDGERCI_RUNNER_ID"]
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - closed with the process
        argv = [sys.executable, "-m", "ledgerci.cli", name.split("#")[0]]
        self.processes[name] = subprocess.Popen(
            wrap(argv) if wrap else argv,
            env=service_env, stdout=log, stderr=subprocess.STDOUT,
        )
        if name.startswith("gateway"):
            self.wait_ready(name)

    def start_all(self) -> None:
        for name in SERVICES:
            self.start(name)

    def gateway_url(self, name: str = "gateway") -> str:
        port = self.ports.get(name, self.port)
        return f"http://127.0.0.1:{port}"

    def wait_ready(self, name: str = "gateway", timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.log_path(name).read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.gateway_url(name)}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)  # test set-up: waiting for a process to come up
        raise TimeoutError("gateway not ready")

    def kill(self, name: str) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop(self, name: str, timeout: float = 30.0) -> float:
        """SIGTERM, as an orchestrator stops a service; returns the seconds it took to exit."""
        process = self.processes.pop(name)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=timeout)
        return time.monotonic() - started

    def pause(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGCONT)

    def restart(self, name: str) -> None:
        self.kill(name)
        self.start(name)

    @contextmanager
    def running(self, services: tuple[str, ...] = SERVICES) -> Iterator[LedgerCluster]:
        """The services started (every one by default), and stopped on the way out, also when
        one did not come up in time (a loaded machine): the ones that did would otherwise
        outlive the test, retrying a nats-server that is gone, for ever."""
        self.base_dir.mkdir(parents=True)
        try:
            for name in services:
                self.start(name)
            yield self
        finally:
            self.stop_all()

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for name, process in list(self.processes.items()):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            del self.processes[name]

    def logs(self) -> str:
        return "\n".join(
            f"===== {path.stem} =====\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.base_dir.glob("*.log"))
        )
