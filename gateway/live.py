"""Live endpoints: a run's changes and a job's log over SSE, and both over one WebSocket.

Authorization happens before a stream starts: the run or job is looked up for the caller's
tenant, so another tenant's id answers 404 like every other endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal
from uuid import UUID

import msgspec
from litestar import Controller, Request, WebSocket, get, websocket
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, WebSocketDisconnect
from litestar.response import ServerSentEvent, ServerSentEventMessage

from commands.app import LedgerApp
from commands.principal import Principal
from domain.errors import DomainError, RunNotFoundError
from gateway.auth import Authenticator
from gateway.blocking import blocking
from gateway.logs import attempt_to_read
from gateway.openapi import errors
from gateway.streams import StreamMessage, Streams, parse_run_version
from projections.queries import RunQueries

STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx and other proxies would otherwise hold events back to fill their buffers.
    "X-Accel-Buffering": "no",
}


def _uuid(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise RunNotFoundError(f"{value} not found") from None


async def authorized_run(ledger: LedgerApp, principal: Principal, run_id: str) -> UUID:
    run = await blocking(ledger.runs.get_run, _uuid(run_id), principal)  # 404 for another tenant's
    return run.id


async def authorized_job(queries: RunQueries, principal: Principal, job_id: str) -> tuple[UUID, str]:
    job = await blocking(queries.locate_job, str(_uuid(job_id)), principal.tenant_id)
    if job is None:
        raise RunNotFoundError(f"job {job_id} not found")
    return UUID(job.run_id), job.job_id


def _sse(messages: AsyncIterator[StreamMessage]) -> ServerSentEvent:
    async def frames() -> AsyncIterator[ServerSentEventMessage]:
        async for message in messages:
            yield ServerSentEventMessage(
                # A comment alone must not carry a data line: browsers would dispatch it.
                data=message.data if message.event else None,
                event=message.event, id=message.id, comment=message.comment, retry=message.retry,
            )

    return ServerSentEvent(frames(), headers=STREAM_HEADERS)


class LiveController(Controller):
    path = "/api/v1"
    tags = ["live"]

    @get("/runs/{run_id:str}/stream", operation_id="streamRun", media_type="text/event-stream",
         responses=errors(404))
    async def stream_run(self, request: Request, run_id: str, ledger: NamedDependency[LedgerApp],
                         streams: NamedDependency[Streams]) -> ServerSentEvent:
        """SSE: the run's state, then the run after each change, as it commits; `end` when it is
        over. Message ids are run versions: reconnect with `Last-Event-ID` to get only what you missed."""
        run = await authorized_run(ledger, request.state.principal, run_id)
        return _sse(streams.follow_run(run, parse_run_version(request.headers.get("last-event-id"))))

    @get("/jobs/{job_id:str}/log/stream", operation_id="streamJobLog", media_type="text/event-stream",
         responses=errors(404))
    async def stream_log(self, request: Request, job_id: str, queries: NamedDependency[RunQueries],
                         streams: NamedDependency[Streams],
                         attempt: int | None = None) -> ServerSentEvent:
        """SSE: the job's log from the start, then live (`log` events), a new `attempt` when a
        retry starts, and `end` with how the job finished. Ids are `<attempt>-<byte offset>`:
        reconnect with `Last-Event-ID` to resume at the next byte.

        `attempt` (1 to the job's current attempt) follows that attempt alone, to its end; an
        earlier attempt's `end` has the status `abandoned` and, as `error`, why."""
        run_id, job = await authorized_job(queries, request.state.principal, job_id)
        if attempt is not None:  # checked before the stream starts, so out of range is a 404
            located = await blocking(queries.locate_job, job, request.state.principal.tenant_id)
            if located is None:
                raise RunNotFoundError(f"job {job_id} not found")
            attempt_to_read(located, attempt)
        return _sse(streams.follow_log(run_id, job, request.headers.get("last-event-id"), attempt=attempt))


# ----- WebSocket ----------------------------------------------------------------------------------

class Subscribe(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A client's request on the socket: follow a run's changes or a job's log.

    `last_id` resumes like SSE's Last-Event-ID. The first message may carry the token instead
    of an Authorization header (browsers cannot set headers on a WebSocket)."""

    subscribe: Literal["run", "log"] | None = None
    id: str | None = None
    last_id: str | None = None
    token: str | None = None


class Frame(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A message to the client: `stream` is `run:<id>` or `log:<job id>`."""

    stream: str | None = None
    event: str | None = None
    id: str | None = None
    data: str | None = None
    error: str | None = None


def live_socket(authenticator: Authenticator):
    @websocket("/api/v1/ws", opt={"public": True})  # it authenticates itself, see Subscribe
    async def socket(socket: WebSocket, ledger: NamedDependency[LedgerApp], queries: NamedDependency[RunQueries],
                     streams: NamedDependency[Streams]) -> None:
        """One connection, several runs and logs: send `{"subscribe": "run"|"log", "id": ...}`."""
        await socket.accept()
        send_lock = asyncio.Lock()
        following: dict[str, asyncio.Task[None]] = {}

        async def send(frame: Frame) -> None:
            async with send_lock:
                await socket.send_text(msgspec.json.encode(frame).decode())

        async def forward(name: str, messages: AsyncIterator[StreamMessage]) -> None:
            async for message in messages:
                if message.retry is not None:  # the gateway is stopping: reconnect elsewhere
                    with contextlib.suppress(Exception):
                        await socket.close(code=1012)
                    return
                if message.event:
                    await send(Frame(stream=name, event=message.event, id=message.id, data=message.data))

        try:
            principal = await _principal(socket, authenticator)
            while True:
                request = msgspec.json.decode(await socket.receive_text(), type=Subscribe)
                if request.token is not None or request.subscribe is None or request.id is None:
                    raise msgspec.ValidationError("a subscription needs `subscribe` and `id`")
                try:
                    name, messages = await _open(request, principal, ledger, queries, streams)
                except DomainError as failed:  # not found, or not the caller's: the same 404 text
                    await send(Frame(stream=f"{request.subscribe}:{request.id}", error=str(failed)))
                    continue
                if name not in following or following[name].done():
                    following[name] = asyncio.create_task(forward(name, messages))
        except (WebSocketDisconnect, NotAuthorizedException, msgspec.DecodeError, msgspec.ValidationError) as ended:
            if not isinstance(ended, WebSocketDisconnect):
                with contextlib.suppress(Exception):
                    await send(Frame(error=str(ended) or type(ended).__name__))
                    await socket.close(code=4401 if isinstance(ended, NotAuthorizedException) else 4400)
        finally:
            for task in following.values():
                task.cancel()

    return socket


async def _principal(socket: WebSocket, authenticator: Authenticator) -> Principal:
    header = socket.headers.get("authorization")
    if header:
        return await authenticator.principal(header)
    first = msgspec.json.decode(await socket.receive_text(), type=Subscribe)
    return await authenticator.principal(f"Bearer {first.token or ''}")


async def _open(request: Subscribe, principal: Principal, ledger: LedgerApp, queries: RunQueries,
                streams: Streams) -> tuple[str, AsyncIterator[StreamMessage]]:
    assert request.id is not None
    if request.subscribe == "run":
        run = await authorized_run(ledger, principal, request.id)
        return f"run:{run}", streams.follow_run(run, parse_run_version(request.last_id))
    run_id, job = await authorized_job(queries, principal, request.id)
    return f"log:{job}", streams.follow_log(run_id, job, request.last_id)
