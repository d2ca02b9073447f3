"""`/healthz`, `/readyz` and `/metrics` on LEDGERCI_METRICS_PORT, for the services with no HTTP
port of their own (relay, projector, scheduler, reaper, runner), so that Kubernetes probes and
Compose healthchecks see what the gateway's own `/healthz` and `/readyz` show.

Served from a thread, as prometheus_client serves `/metrics`, so a probe is answered even while
the service is busy; liveness still asks the service's event loop to run a no-op, so a loop that
is stuck (a blocking call on it) is reported, not hidden by the thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from nats.aio.client import Client as NATS
from prometheus_client import make_wsgi_app

# Below the probes' own timeouts (deploy/: 5 s), so a dependency that hangs answers 503 rather
# than making the probe time out without saying which dependency it was.
CHECK_TIMEOUT_SECONDS = 2.0
LOOP_TIMEOUT_SECONDS = 3.0

Check = Callable[[], object]
"""Raises when its dependency cannot be used; its return value is ignored."""


class Probes:
    """What `/healthz` and `/readyz` answer, from checks added as the service connects."""

    def __init__(self, needs: Iterable[str]) -> None:
        # A dependency named here but not yet added is "starting": not ready before connecting.
        self._checks: dict[str, Check | None] = dict.fromkeys(needs)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Checks of a dependency that hangs (a pool waiting for a connection) are left running
        # here after their timeout; a few threads bound how many can pile up.
        self._workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def liveness(self) -> tuple[int, dict[str, Any]]:
        """200 while the service's event loop runs a no-op within LOOP_TIMEOUT_SECONDS."""
        if self._loop is None or self._loop.is_closed():
            return 200, {"status": "ok"}
        try:
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop).result(LOOP_TIMEOUT_SECONDS)
        except (FutureTimeout, RuntimeError):
            return 503, {"status": "unavailable", "checks": {"event_loop": "not answering"}}
        return 200, {"status": "ok"}

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """200 when every dependency answers, else 503 naming each one that does not."""
        deadline = time.monotonic() + CHECK_TIMEOUT_SECONDS
        pending = {name: self._workers.submit(check) if check else None for name, check in self._checks.items()}
        checks: dict[str, str] = {}
        for name, future in pending.items():
            if future is None:
                checks[name] = "starting"
                continue
            try:
                future.result(timeout=max(deadline - time.monotonic(), 0))
                checks[name] = "ok"
            except FutureTimeout:
                checks[name] = f"unavailable: no answer in {CHECK_TIMEOUT_SECONDS:g} s"
            except Exception as failed:  # readiness reports what failed, it does not raise
                checks[name] = f"unavailable: {type(failed).__name__}"
        ready = all(value == "ok" for value in checks.values())
        return (200 if ready else 503), {"status": "ok" if ready else "unavailable", "checks": checks}

    def close(self) -> None:
        self._workers.shutdown(wait=False, cancel_futures=True)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a probe still being answered never holds the process at exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes come every few seconds: logging each would bury the service's own lines."""


def _app(probes: Probes) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app()
    answers = {"/healthz": probes.liveness, "/readyz": probes.readiness}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        answer = answers.get(environ.get("PATH_INFO", ""))
        if answer is None:
            return metrics(environ, start_response)
        status, body = answer()
        start_response(f"{status} {'OK' if status == 200 else 'Service Unavailable'}",
                       [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    return app


@contextmanager
def serving(probes: Probes, host: str, port: int) -> Iterator[None]:
    """Serve the probes and the process's metrics on host:port until the block ends."""
    server = make_server(host, port, _app(probes), _ThreadingServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        probes.close()


def nats_connected(nc: NATS) -> Check:
    """NATS is usable while the client is connected (it reconnects by itself after an outage)."""

    def check() -> None:
        if not nc.is_connected:
            raise ConnectionError("not connected to NATS")

    return check
