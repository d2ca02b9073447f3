"""What a runner is sent for one attempt of a job: the dispatch, built from the run's own events."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from domain.messages import ArtifactInput, JobDispatch
from domain.run import Run
from domain.status import JobStatus
from domain.workflow import JobSpec


class RunOrigin(NamedTuple):
    """What a run's `RunRequested` says about where its jobs come from."""

    run_id: str
    tenant_id: str
    repository_id: str
    clone_url: str
    commit: str
    ref: str | None


def job_dispatch(origin: RunOrigin, job_id: str, attempt: int, spec: JobSpec) -> JobDispatch:
    """The message that offers one attempt of a job to the runners."""
    return JobDispatch(
        run_id=origin.run_id, job_id=job_id, attempt=attempt, job_name=spec.name, tenant_id=origin.tenant_id,
        repository_id=origin.repository_id, clone_url=origin.clone_url, commit=origin.commit, ref=origin.ref,
        script=spec.run, env=dict(spec.env), image=spec.image, timeout_seconds=spec.timeout_seconds,
        idempotency_key=f"{origin.run_id}:{job_id}", resources=spec.resources, pool=spec.pool,
        artifacts=spec.artifacts, cache=spec.cache, lists_secrets=bool(spec.secrets),
    )


def inputs_of(run: Run, job_id: str, now: datetime) -> list[ArtifactInput]:
    """What the jobs before `job_id` left and has not expired, the later job's file winning a
    path both left."""
    job = run.job(job_id)
    left = {path: stored for earlier in run.jobs[:job.index] for path, stored in earlier.artifacts.items()
            if stored.expires_at > now}
    return [ArtifactInput(path=path, object=stored.object, size=stored.size, sha256=stored.sha256)
            for path, stored in left.items()]


def ready_dispatch(run: Run) -> JobDispatch | None:
    """What a runner needs for the run's queued attempt, if one is queued."""
    job = run.current_job
    if job is None or job.status is not JobStatus.QUEUED:
        return None
    origin = RunOrigin(str(run.id), run.tenant_id, run.repository_id, run.clone_url, run.commit, run.ref)
    return job_dispatch(origin, str(job.id), job.attempt, job.spec)
