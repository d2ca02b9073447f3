"""The planner's rules that are not the run's own decisions: a concurrency group's name for a
run, the schedules a push declares, the pools and priority a tenant allows."""

from __future__ import annotations

from datetime import datetime

import msgspec

from domain.concurrency import group_name
from domain.registry import ANY_POOL, Tenant, pool_allowed
from domain.run import Run
from domain.workflow import JobSpec, Workflow, capped_priority


def group_of(run: Run, workflow: Workflow, template: str) -> str:
    """A group's name for this run: the file's template with the run's values filled in."""
    return group_name(template, repository=run.repository_id, ref=run.ref, commit=run.commit,
                      workflow=workflow.name)


def declare_schedules(run: Run, workflow: Workflow, at: datetime, actor: str) -> None:
    """A push to a branch whose file has schedules for that branch declares them. (A push that
    declares none there, planned later, ends them: the read model keeps the newest push's.)
    A scheduled run declares nothing: it runs the file that declared it; nor does a re-run,
    which runs an older push again (it must not bring back that push's schedules)."""
    if run.scheduled_by is not None or run.rerun or not run.ref or not run.ref.startswith("refs/heads/"):
        return
    branch = run.ref.removeprefix("refs/heads/")
    crons = [schedule.cron for schedule in workflow.schedules if schedule.branch == branch]
    if crons:
        run.declare_schedules(branch, crons, at, actor)


def pool_refusal(tenant_id: str, tenant: Tenant | None, jobs: list[JobSpec]) -> str | None:
    """Why the tenant may not run these jobs where they ask to run, if it may not."""
    allowed = tenant.pools if tenant is not None else ANY_POOL
    for job in jobs:
        if not pool_allowed(allowed, job.pool):
            return (f'job "{job.name}" asks for runner pool "{job.pool}"; tenant {tenant_id!r} '
                    f"may use: {', '.join(allowed)}")
    return None


def within_tenant_cap(jobs: list[JobSpec], tenant: Tenant | None) -> list[JobSpec]:
    """The jobs as their file asks, within what the admin allows its tenant: the priority
    lowered to its cap, its artifacts kept no longer than its maximum, and its byte quotas for
    artifacts and caches written in for the runner."""
    if tenant is None:
        return jobs
    return [_within_limits(msgspec.structs.replace(job, priority=capped_priority(job.priority, tenant.max_priority)),
                           tenant) for job in jobs]


def _within_limits(job: JobSpec, tenant: Tenant) -> JobSpec:
    artifacts, cache = job.artifacts, job.cache
    if artifacts is not None:
        longest = tenant.max_artifact_days * 86400 if tenant.max_artifact_days else artifacts.expire_in_seconds
        artifacts = msgspec.structs.replace(artifacts, expire_in_seconds=min(artifacts.expire_in_seconds, longest),
                                            quota_bytes=tenant.max_artifact_bytes)
    if cache is not None:
        cache = msgspec.structs.replace(cache, quota_bytes=tenant.max_cache_bytes)
    if artifacts is job.artifacts and cache is job.cache:
        return job
    return msgspec.structs.replace(job, artifacts=artifacts, cache=cache)
