"""ledgerci in the test's own process: the fast loop for the runner's and admission's logic.

Everything `ledgerci dev` runs (gateway, relay, projector, planner, admission, command service,
reaper) runs here on a thread of its own with its own event loop, on SQLite and a real
nats-server (the embedded one, a process), and the runner runs beside them with the scripted
executor (runner/scripted.py): a job costs no process, and does exactly what its script says
when the test says. Starting it takes about a second; a job a few milliseconds.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from ledgerci.embedded_nats import EmbeddedNats
from ledgerci.services import run_all
from ledgerci.settings import Settings
from runner.scripted import ScriptedExecutor
from sealing import Keyring
from tests.support.api import Api
from tests.support.processes import free_port

START_TIMEOUT_SECONDS = 30.0


@dataclass
class InProcess:
    api: Api  # as the admin
    executor: ScriptedExecutor
    database_url: str
    nats_url: str  # the embedded nats-server's: its object stores hold the artifacts and caches


@contextmanager
def in_process_ledger(data_dir: Path, **settings: object) -> Iterator[InProcess]:
    """The whole system on `data_dir`, with these settings (Settings' field names) changed."""
    nats = EmbeddedNats(data_dir / "nats")
    nats.start()
    admin_token = f"lci_admin_{secrets.token_urlsafe(16)}"
    port = free_port()
    configured = replace(
        Settings.from_env(), data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'ledgerci.db'}",
        nats_url=nats.url, admin_token=admin_token, secret_key=Keyring.generate_key(), host="127.0.0.1",
        port=port, runner_id="scripted-runner", **settings,
    )
    executor = ScriptedExecutor()
    ready = threading.Event()
    failed: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(run_all(configured, stop, ready.set, runner_executor=executor))
        except BaseException as error:  # handed to the test's thread, which raises it
            failed.append(error)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name="ledgerci-in-process", daemon=True)
    thread.start()
    try:
        if not ready.wait(START_TIMEOUT_SECONDS) or failed:
            raise RuntimeError("ledgerci did not start in this process") from (failed[0] if failed else None)
        yield InProcess(Api(f"http://127.0.0.1:{port}", admin_token), executor, configured.database_url, nats.url)
    finally:
        if not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        thread.join(configured.stop_grace_seconds + 15)
        nats.stop()
        if failed:
            raise failed[0]
