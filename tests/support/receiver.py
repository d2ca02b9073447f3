"""A small real HTTP server that records what it is POSTed: plays a git host's status API or
the receiver of outgoing webhooks. It can answer 500 a number of times first, or redirect
every request elsewhere (`redirect_to`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple


class Received(NamedTuple):
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> Any:
        return json.loads(self.raw)


class Receiver:
    def __init__(self) -> None:
        self._received: list[Received] = []
        self.failures_left = 0
        self.redirect_to: str | None = None  # a URL: every POST answered 307 to it, unrecorded
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server calls
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.redirect_to is not None:
                    self.send_response(307)
                    self.send_header("Location", receiver.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with receiver.lock:
                    failing = receiver.failures_left > 0
                    receiver.failures_left -= failing
                    if not failing:
                        receiver._received.append(Received(self.path, dict(self.headers), raw))
                self.send_response(500 if failing else 201)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def received(self) -> list[Received]:
        """What it answered 201 to, in order."""
        with self.lock:
            return list(self._received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    try:
        yield receiver
    finally:
        receiver.close()
