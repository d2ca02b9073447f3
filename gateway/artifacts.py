"""A run's artifacts (domain/artifacts.py): listed, and each downloaded as it was stored,
streamed from the JetStream object store with its length and SHA-256. Another tenant's run
answers 404 on both, exactly as an absent one."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from urllib.parse import quote

import msgspec
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.response import Stream
from nats.aio.client import Client as NATS
from nats.js.errors import ObjectNotFoundError

from domain.artifacts import BUCKET
from domain.errors import ArtifactExpiredError, ArtifactNotFoundError
from gateway.blocking import blocking
from gateway.openapi import errors
from gateway.routes import principal_of, uuid_or_not_found
from objectstore import bucket, read_chunks
from projections.artifacts import ArtifactQueries, ArtifactRow
from projections.queries import RunQueries
from projections.timestamps import rfc3339


class ArtifactList(msgspec.Struct, kw_only=True):
    run_id: str
    artifacts: list[ArtifactRow]  # by job, then path; download each at ./artifacts/{name}


class ArtifactReader:
    """Reads objects of the artifacts' bucket."""

    def __init__(self, nc: NATS) -> None:
        self._store = bucket(nc.jetstream(), BUCKET)

    async def stored(self, name: str) -> bool:
        """Whether the object is there (the reaper may have removed it before recording so)."""
        try:
            await self._store.get_info(name)
        except ObjectNotFoundError:
            return False
        return True

    async def chunks(self, name: str) -> AsyncIterator[bytes]:
        """The object's bytes as they arrive; its SHA-256 is checked at the end."""
        async for chunk in read_chunks(self._store, name):
            yield chunk


class ArtifactsController(Controller):
    path = "/api/v1/runs/{run_id:str}/artifacts"
    tags = ["artifacts"]

    @get(operation_id="listRunArtifacts", responses=errors(404))
    async def list_artifacts(self, request: Request, run_id: str, queries: NamedDependency[RunQueries],
                             artifact_queries: NamedDependency[ArtifactQueries]) -> ArtifactList:
        """The files the run's jobs left (each job's latest attempt that stored any)."""
        run = await _visible_run(request, run_id, queries)
        return ArtifactList(run_id=run, artifacts=await blocking(artifact_queries.of_run, run))

    @get("/{name:path}", operation_id="downloadRunArtifact", responses=errors(404, 410),
         media_type="application/octet-stream")
    async def download(self, request: Request, run_id: str, name: str, queries: NamedDependency[RunQueries],
                       artifact_queries: NamedDependency[ArtifactQueries],
                       artifact_reader: NamedDependency[ArtifactReader],
                       clock: NamedDependency[Callable[[], datetime]]) -> Stream:
        """One artifact, by its name (`<job>/<path>`), as stored: `Content-Length`, and its SHA-256
        in `Digest` (base64) and `X-Ledgerci-Sha256` (hex)."""
        run = await _visible_run(request, run_id, queries)
        name = name.lstrip("/")
        found = await blocking(artifact_queries.find, run, name)
        if found is None:
            raise ArtifactNotFoundError(f"run {run} has no artifact {name[:200]!r}")
        expired = found.row.removed_at is not None or found.row.expires_at <= rfc3339(clock())
        if expired or not await artifact_reader.stored(found.object):
            raise ArtifactExpiredError(f"artifact {name[:200]!r} of run {run} expired at {found.row.expires_at}")
        filename = quote(found.row.path.rsplit("/", 1)[-1])
        return Stream(artifact_reader.chunks(found.object), media_type="application/octet-stream", headers={
            "Content-Length": str(found.row.size),
            "Digest": f"sha-256={base64.b64encode(bytes.fromhex(found.row.sha256)).decode()}",
            "X-Ledgerci-Sha256": found.row.sha256,
            "ETag": f'"{found.row.sha256}"',
            "Content-Disposition": f"attachment; filename*=UTF-8''{filename}",
        })


async def _visible_run(request: Request, run_id: str, queries: RunQueries) -> str:
    run = await blocking(queries.get_run, uuid_or_not_found(run_id), principal_of(request).tenant_id)
    if run is None:
        raise ArtifactNotFoundError(f"run {run_id} not found")
    return run.id
