"""The runner: the agent with its executor and its artifacts and caches. It never opens the
database: NATS only."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from nats.aio.client import Client as NATS

from domain.artifacts import BUCKET as ARTIFACTS_BUCKET
from domain.caches import BUCKET as CACHES_BUCKET
from ledgerci.settings import Settings
from objectstore import bucket
from runner.agent import RunnerAgent
from runner.attempt_files import AttemptFiles
from runner.caches import Caches
from runner.executor import Executor
from runner.local import LocalExecutor
from runner.scripted import ScriptedExecutor

log = logging.getLogger("ledgerci")


async def runner_service(settings: Settings, stop: asyncio.Event, nc: NATS, executor: Executor | None = None) -> None:
    agent = RunnerAgent(
        nc, executor or await _executor(settings), runner_id=settings.runner_id, pool=settings.runner_pool,
        slots=settings.runner_slots, data_dir=settings.data_dir, max_deliver=settings.max_deliver,
        stop_grace=settings.stop_grace_seconds, max_log_bytes=settings.max_log_bytes,
        lease_seconds=settings.lease_seconds, files=await _attempt_files(settings, nc),
    )
    await agent.run(stop)


async def _attempt_files(settings: Settings, nc: NATS) -> AttemptFiles:
    js = nc.jetstream()
    caches = Caches(bucket(js, CACHES_BUCKET), tenant_quota_bytes=settings.cache_tenant_max_bytes,
                    scratch=settings.data_dir / "cache-scratch")
    return AttemptFiles(bucket(js, ARTIFACTS_BUCKET), caches,
                        artifact_tenant_quota_bytes=settings.artifact_tenant_max_bytes)


async def _executor(settings: Settings) -> Executor:
    if settings.executor == "local":
        return LocalExecutor()
    if settings.executor == "scripted":  # tests and benchmarks: no process per job (runner/scripted.py)
        return ScriptedExecutor()
    if settings.executor != "docker":
        raise SystemExit(f"LEDGERCI_EXECUTOR is {settings.executor!r}: use local, docker or scripted")
    # Only a Docker runner loads the engine's client.
    from docker.errors import DockerException

    from runner.docker import PULL_POLICIES, DockerExecutor, DockerSettings, PullPolicy

    if settings.docker_pull not in PULL_POLICIES:
        raise SystemExit(f"LEDGERCI_DOCKER_PULL is {settings.docker_pull!r}: use one of {', '.join(PULL_POLICIES)}")
    try:
        executor = DockerExecutor(DockerSettings(
            pull=cast(PullPolicy, settings.docker_pull), network=settings.docker_network, user=settings.docker_user,
            default_image=settings.docker_default_image, pids_limit=settings.docker_pids_limit,
            max_cpus=settings.docker_max_cpus, max_memory=settings.docker_max_memory,
            read_only=settings.docker_read_only,
        ), runner_id=settings.runner_id)
        # A previous life of this runner id may have died mid-job: its containers go before any new job.
        removed = await executor.remove_leftovers()
    except DockerException as failed:
        raise SystemExit(f"LEDGERCI_EXECUTOR=docker, but the Docker engine does not answer: {failed}") from None
    log.info("docker executor ready (network %s, pull %s); removed %d left-over containers",
             settings.docker_network, settings.docker_pull, removed)
    return executor
