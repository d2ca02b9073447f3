"""A server-sent-events client that resumes: it reconnects with `Last-Event-ID` after a drop
or a gateway that stops, so its caller sees every message once, in order."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import httpx
import msgspec

RECONNECT_LIMIT = 20  # reconnects in a row without a single message before giving up


class SseMessage(msgspec.Struct, frozen=True):
    event: str
    data: str
    id: str | None


class StreamError(Exception):
    pass


class StreamRefused(StreamError):
    """The gateway answered the stream's request with an error: its status and body."""

    def __init__(self, status_code: int, body: object) -> None:
        super().__init__(f"{status_code}: {body}")
        self.status_code = status_code
        self.body = body


def parse(lines: Iterable[str]) -> Iterator[SseMessage | int]:
    """Messages from the lines of an event stream (the WHATWG rules, minus what we never send);
    a `retry:` field comes out as an int of milliseconds."""
    event, data, message_id = "message", [], None
    for line in lines:
        if not line:
            if data:
                yield SseMessage(event=event, data="\n".join(data), id=message_id)
            event, data, message_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
        elif field == "id":
            message_id = value
        elif field == "retry" and value.isdigit():
            yield int(value)


def follow(http: httpx.Client, path: str, last_id: str | None = None,
           reconnect: bool = True) -> Iterator[SseMessage]:
    """Every message of the stream at `path` until its `end` message (included)."""
    retry_seconds, failures = 1.0, 0
    while True:
        headers = {"Accept": "text/event-stream"} | ({"Last-Event-ID": last_id} if last_id else {})
        try:
            with http.stream("GET", path, headers=headers, timeout=httpx.Timeout(30, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    try:
                        body = response.json()
                    except ValueError:
                        body = response.text
                    raise StreamRefused(response.status_code, body)
                for item in parse(response.iter_lines()):
                    if isinstance(item, int):
                        retry_seconds = item / 1000
                        continue
                    failures = 0
                    yield item
                    if item.id is not None:
                        last_id = item.id
                    if item.event == "end":
                        return
        except httpx.TransportError:
            pass  # the gateway went away mid-stream: reconnect below
        failures += 1
        if not reconnect or failures > RECONNECT_LIMIT:
            raise StreamError(f"the stream {path} ended before its end message")
        time.sleep(retry_seconds)  # the gateway's retry hint: not a hot path, a reconnect
