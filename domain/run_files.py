"""A run's records of the files its jobs' attempts leave: the artifacts an attempt stored
(domain/artifacts.py) and what its cache restored and saved (domain/caches.py), recorded in the
save of the attempt's outcome; and the artifacts' expiry. Mixed into `Run` (domain/run.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from domain import job_events
from domain.artifacts import UploadedArtifact, object_name
from domain.caches import CacheReport
from domain.job import Job


class FileRecords:
    if TYPE_CHECKING:  # what it uses of Run
        id: UUID
        tenant_id: str
        repository_id: str

        def job(self, job_id: UUID | str) -> Job: ...
        def trigger_event(self, event_class: type, **kwargs: Any) -> None: ...

    def _record_artifacts(self, job: Job, attempt: int, uploaded: list[UploadedArtifact], at: datetime,
                          actor: str) -> None:
        assert job.spec.artifacts is not None  # uploads_problem says so otherwise
        expires_at = at + timedelta(seconds=job.spec.artifacts.expire_in_seconds)
        for artifact in uploaded:
            self.trigger_event(
                job_events.ArtifactUploaded, timestamp=at, job_id=str(job.id), attempt=attempt, path=artifact.path,
                size=artifact.size, sha256=artifact.sha256, expires_at=expires_at, actor=actor,
                object=object_name(self.tenant_id, self.repository_id, str(self.id), str(job.id), attempt,
                                   artifact.path),
            )

    def expire_artifacts(self, job_id: UUID | str, paths: list[str], at: datetime, actor: str) -> bool:
        """The files of a job past their `expire_in` were removed from the store: record it.
        Idempotent: paths no longer held, or not yet expired, are left out."""
        job = self.job(job_id)
        gone = [path for path in paths if path in job.artifacts and job.artifacts[path].expires_at <= at]
        if not gone:
            return False
        self.trigger_event(job_events.ArtifactsExpired, timestamp=at, job_id=str(job.id), paths=gone, actor=actor)
        return True

    def _record_cache(self, job: Job, attempt: int, cache: CacheReport, at: datetime, actor: str) -> None:
        if cache.restored is not None:
            self.trigger_event(job_events.CacheRestored, timestamp=at, job_id=str(job.id), attempt=attempt,
                               key=cache.key, result=cache.restored, restored_key=cache.restored_key, actor=actor)
        if cache.saved_size is not None:
            self.trigger_event(job_events.CacheSaved, timestamp=at, job_id=str(job.id), attempt=attempt, key=cache.key,
                               size=cache.saved_size, sha256=cache.saved_sha256, actor=actor)
