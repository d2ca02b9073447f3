"""What an attempt's workspace gets before its command and what is kept of it after: the
files earlier jobs left and the cache entry (before), its artifacts and its cache entry
(after). What the agent reports with the outcome comes back from `after`."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import msgspec

from domain.artifacts import UploadedArtifact
from domain.caches import CacheReport
from domain.messages import ArtifactInput, JobDispatch
from runner.artifacts import ArtifactError, ObjectStore, fetch_inputs, store_outputs
from runner.caches import Caches, Say
from runner.executor import Outcome


class Kept(NamedTuple):
    outcome: Outcome
    artifacts: list[UploadedArtifact]
    cache: CacheReport | None


class AttemptFiles:
    def __init__(self, artifacts: ObjectStore, caches: Caches, *, artifact_tenant_quota_bytes: int) -> None:
        self.artifacts = artifacts
        self.caches = caches
        self.artifact_tenant_quota_bytes = artifact_tenant_quota_bytes

    async def before(self, dispatch: JobDispatch, inputs: list[ArtifactInput], workdir: Path,
                     say: Say) -> tuple[str | None, CacheReport | None]:
        """(why the attempt cannot run, if it cannot; what the cache restore found)."""
        try:
            await fetch_inputs(self.artifacts, inputs, workdir)
        except ArtifactError as failed:
            return str(failed), None
        if dispatch.cache is None:
            return None, None
        try:
            key = await self.caches.key(dispatch, workdir)
        except Exception as failed:  # a cache never fails the job: it runs without one
            await say(f"ledgerci: cache key not worked out ({type(failed).__name__}: {failed}); no cache\n")
            return None, None
        return None, await self.caches.restore(dispatch, key, workdir, say)

    async def after(self, dispatch: JobDispatch, workdir: Path, outcome: Outcome, cache: CacheReport | None,
                    say: Say) -> Kept:
        """Store the artifacts its `when` asks for (failing to store one fails the job: an
        outcome must not promise files that are not there), then save the cache entry after a
        success."""
        succeeded = outcome.exit_code == 0 and outcome.error is None
        stored: list[UploadedArtifact] = []
        spec = dispatch.artifacts
        if spec is not None and not outcome.timed_out and spec.wanted(succeeded):
            try:
                quota = spec.quota_bytes or self.artifact_tenant_quota_bytes  # the tenant's own, else the default
                stored = await store_outputs(self.artifacts, dispatch, workdir, quota)
            except Exception as failed:
                error = str(failed) if isinstance(failed, ArtifactError) else (
                    f"artifacts not stored: {type(failed).__name__}: {failed}")
                outcome = msgspec.structs.replace(outcome, error=error)
                succeeded = False
        if cache is not None and succeeded:
            cache = await self.caches.save(dispatch, cache, workdir, say)
        return Kept(outcome, stored, cache)
