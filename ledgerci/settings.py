"""Settings, read from the environment. Every variable is listed in the README's table."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    """LEDGERCI_DATA_DIR: local files of a service (repository mirrors, workspaces, dev store)."""
    database_url: str
    """LEDGERCI_DATABASE_URL: event store and read models, postgresql://… or sqlite:///path."""
    nats_url: str
    """LEDGERCI_NATS_URL: NATS servers, comma-separated."""
    admin_token: str
    """LEDGERCI_ADMIN_TOKEN: the admin token (the gateway refuses to start without one)."""
    secret_key: str
    """LEDGERCI_SECRET_KEY: keys that encrypt secrets at rest, base64url of 32 bytes, comma-separated,
    newest first (gateway and scheduler; empty: secrets cannot be set or used)."""
    host: str
    """LEDGERCI_HOST: the gateway's listen address."""
    port: int
    """LEDGERCI_PORT: the gateway's port."""
    runner_pool: str
    """LEDGERCI_RUNNER_POOL: the pool a runner serves."""
    runner_slots: int
    """LEDGERCI_RUNNER_SLOTS: how many jobs one runner runs at once."""
    max_log_bytes: int
    """LEDGERCI_MAX_LOG_BYTES: a job attempt's log is cut at this size (default 16 MiB), with a line saying so."""
    runner_id: str
    """LEDGERCI_RUNNER_ID: a runner's name in events (default host-pid)."""
    executor: str
    """LEDGERCI_EXECUTOR: `local` (a process under `sh -e`) or `docker` (a container per attempt)."""
    docker_pull: str
    """LEDGERCI_DOCKER_PULL: `if-not-present`, `never` (tests, air-gapped runners) or `always`."""
    docker_network: str
    """LEDGERCI_DOCKER_NETWORK: a job container's network: `none`, or a network the pool's operator fenced off."""
    docker_user: str
    """LEDGERCI_DOCKER_USER: uid[:gid] jobs run as (empty: 65534 for a root runner, else the runner's uid)."""
    docker_default_image: str
    """LEDGERCI_DOCKER_DEFAULT_IMAGE: the image of a job whose workflow names none."""
    docker_pids_limit: int
    """LEDGERCI_DOCKER_PIDS_LIMIT: processes one job container may have."""
    docker_max_cpus: float
    """LEDGERCI_DOCKER_MAX_CPUS: cap (and default) of a job's `resources.cpus`."""
    docker_max_memory: str
    """LEDGERCI_DOCKER_MAX_MEMORY: cap (and default) of a job's `resources.memory`, like "2g"."""
    docker_read_only: bool
    """LEDGERCI_DOCKER_READ_ONLY: a read-only root filesystem for jobs (/tmp and the workspace stay writable)."""
    lease_seconds: float
    """LEDGERCI_LEASE_SECONDS: how long a claim lasts without a heartbeat."""
    queue_timeout_seconds: float
    """LEDGERCI_QUEUE_TIMEOUT_SECONDS: a job queued longer than this fails "not picked up"."""
    reaper_interval_seconds: float
    """LEDGERCI_REAPER_INTERVAL_SECONDS: how often the reaper looks for passed deadlines."""
    reoffer_after_seconds: float
    """LEDGERCI_REOFFER_AFTER_SECONDS: a released job no runner started this long is published again."""
    public_url: str
    """LEDGERCI_PUBLIC_URL: the gateway as users reach it; commit statuses link to runs under it."""
    status_retry_seconds: float
    """LEDGERCI_STATUS_RETRY_SECONDS: the first wait before a commit status is sent again (it doubles)."""
    artifact_tenant_max_bytes: int
    """LEDGERCI_ARTIFACT_TENANT_MAX_BYTES: a job whose artifacts would take a tenant's stored files
    past this many bytes fails saying so (runner)."""
    cache_tenant_max_bytes: int
    """LEDGERCI_CACHE_TENANT_MAX_BYTES: a tenant's cache entries beyond this many bytes go, least
    recently used first (runner)."""
    webhook_retry_seconds: float
    """LEDGERCI_WEBHOOK_RETRY_SECONDS: the first wait before an outgoing webhook is sent again (it doubles)."""
    outbound_allow_private: bool
    """LEDGERCI_OUTBOUND_ALLOW_PRIVATE: let commit statuses and outgoing webhooks go to loopback and
    private addresses."""
    schedule_clock_speed: float
    """LEDGERCI_SCHEDULE_CLOCK_SPEED: schedule time runs this many times as fast as the wall clock
    (1; tests use 20, so that a cron minute passes in 3 seconds). Every replica must agree."""
    max_deliver: int
    """LEDGERCI_MAX_DELIVER: deliveries of a dispatch before it goes to the dead-letter stream."""
    stream_replicas: int
    """LEDGERCI_STREAM_REPLICAS: JetStream replicas per stream (3 on a 3-node cluster)."""
    idle_check_seconds: float
    """LEDGERCI_IDLE_CHECK_SECONDS: backstop re-check of the store when no wake-up came."""
    leader_session_seconds: float
    """LEDGERCI_LEADER_SESSION_SECONDS: how long PostgreSQL keeps a silent admission leader's lock
    session (30): a leader cut off from the store is replaced this much later. At least six
    times LEDGERCI_IDLE_CHECK_SECONDS and 6 s, since a leader pings every third of it between steps."""
    db_pool_size: int
    """LEDGERCI_DB_POOL_SIZE: database connections per process."""
    db_drop_lost_clients: bool
    """LEDGERCI_DB_DROP_LOST_CLIENTS: sessions start with TCP keepalive settings, so PostgreSQL
    ends a lost service's session (and frees its locks) within about 8 s
    (commands/postgres_store.py); `false` behind a pooler that refuses libpq's `options`."""
    default_max_concurrent_jobs: int
    """LEDGERCI_DEFAULT_MAX_CONCURRENT_JOBS: a new tenant's concurrent-job quota."""
    default_max_queued_runs: int
    """LEDGERCI_DEFAULT_MAX_QUEUED_RUNS: a new tenant's queued-run quota."""
    default_pushes_per_minute: int
    """LEDGERCI_DEFAULT_PUSHES_PER_MINUTE: a new tenant's push rate."""
    log_level: str
    """LEDGERCI_LOG_LEVEL: DEBUG, INFO, WARNING…"""
    stop_grace_seconds: float
    """LEDGERCI_STOP_GRACE_SECONDS: a runner told to stop (SIGTERM) lets running jobs finish this
    long, then kills them and hands their attempts back to run elsewhere."""
    metrics_port: int
    """LEDGERCI_METRICS_PORT: where a service other than the gateway serves /metrics (0: nowhere)."""
    log_format: str
    """LEDGERCI_LOG_FORMAT: `text`, or `json` (one object per line, for log collectors)."""
    audit_key: str
    """LEDGERCI_AUDIT_KEY: key of the events' tamper-evident chain (empty: an unkeyed hash chain)."""
    auto_migrate: bool
    """LEDGERCI_AUTO_MIGRATE: services create missing tables at start (`false` when they run as a
    restricted role and `ledgerci migrate` is a deployment step of its own)."""

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(_env("LEDGERCI_DATA_DIR", ".ledgerci")).absolute()
        return cls(
            data_dir=data_dir,
            database_url=_env("LEDGERCI_DATABASE_URL", f"sqlite:///{data_dir / 'ledgerci.db'}"),
            nats_url=_env("LEDGERCI_NATS_URL", "nats://127.0.0.1:4222"),
            admin_token=_env("LEDGERCI_ADMIN_TOKEN", ""),
            secret_key=_env("LEDGERCI_SECRET_KEY", ""),
            host=_env("LEDGERCI_HOST", "127.0.0.1"),
            port=int(_env("LEDGERCI_PORT", "8080")),
            runner_pool=_env("LEDGERCI_RUNNER_POOL", "default"),
            runner_slots=int(_env("LEDGERCI_RUNNER_SLOTS", "2")),
            max_log_bytes=int(_env("LEDGERCI_MAX_LOG_BYTES", str(16 * 1024 * 1024))),
            runner_id=_env("LEDGERCI_RUNNER_ID", f"{socket.gethostname()}-{os.getpid()}"),
            executor=_env("LEDGERCI_EXECUTOR", "local"),
            docker_pull=_env("LEDGERCI_DOCKER_PULL", "if-not-present"),
            docker_network=_env("LEDGERCI_DOCKER_NETWORK", "none"),
            docker_user=_env("LEDGERCI_DOCKER_USER", ""),
            docker_default_image=_env("LEDGERCI_DOCKER_DEFAULT_IMAGE", "debian:bookworm-slim"),
            docker_pids_limit=int(_env("LEDGERCI_DOCKER_PIDS_LIMIT", "512")),
            docker_max_cpus=float(_env("LEDGERCI_DOCKER_MAX_CPUS", "2")),
            docker_max_memory=_env("LEDGERCI_DOCKER_MAX_MEMORY", "2g"),
            docker_read_only=_env("LEDGERCI_DOCKER_READ_ONLY", "true").lower() not in ("false", "0", "no"),
            lease_seconds=float(_env("LEDGERCI_LEASE_SECONDS", "30")),
            queue_timeout_seconds=float(_env("LEDGERCI_QUEUE_TIMEOUT_SECONDS", "3600")),
            reaper_interval_seconds=float(_env("LEDGERCI_REAPER_INTERVAL_SECONDS", "1")),
            reoffer_after_seconds=float(_env("LEDGERCI_REOFFER_AFTER_SECONDS", "30")),
            public_url=_env("LEDGERCI_PUBLIC_URL", f"http://{_env('LEDGERCI_HOST', '127.0.0.1')}:"
                                                   f"{_env('LEDGERCI_PORT', '8080')}"),
            status_retry_seconds=float(_env("LEDGERCI_STATUS_RETRY_SECONDS", "5")),
            artifact_tenant_max_bytes=int(_env("LEDGERCI_ARTIFACT_TENANT_MAX_BYTES", str(1024**3))),
            cache_tenant_max_bytes=int(_env("LEDGERCI_CACHE_TENANT_MAX_BYTES", str(1024**3))),
            webhook_retry_seconds=float(_env("LEDGERCI_WEBHOOK_RETRY_SECONDS", "5")),
            outbound_allow_private=_env("LEDGERCI_OUTBOUND_ALLOW_PRIVATE", "false").lower() in ("true", "1", "yes"),
            schedule_clock_speed=float(_env("LEDGERCI_SCHEDULE_CLOCK_SPEED", "1")),
            max_deliver=int(_env("LEDGERCI_MAX_DELIVER", "20")),
            stream_replicas=int(_env("LEDGERCI_STREAM_REPLICAS", "1")),
            idle_check_seconds=float(_env("LEDGERCI_IDLE_CHECK_SECONDS", "2")),
            leader_session_seconds=float(_env("LEDGERCI_LEADER_SESSION_SECONDS", "30")),
            db_pool_size=int(_env("LEDGERCI_DB_POOL_SIZE", "4")),
            db_drop_lost_clients=_env("LEDGERCI_DB_DROP_LOST_CLIENTS", "true").lower() not in ("false", "0", "no"),
            default_max_concurrent_jobs=int(_env("LEDGERCI_DEFAULT_MAX_CONCURRENT_JOBS", "10")),
            default_max_queued_runs=int(_env("LEDGERCI_DEFAULT_MAX_QUEUED_RUNS", "100")),
            default_pushes_per_minute=int(_env("LEDGERCI_DEFAULT_PUSHES_PER_MINUTE", "60")),
            log_level=_env("LEDGERCI_LOG_LEVEL", "INFO"),
            stop_grace_seconds=float(_env("LEDGERCI_STOP_GRACE_SECONDS", "20")),
            metrics_port=int(_env("LEDGERCI_METRICS_PORT", "0")),
            log_format=_env("LEDGERCI_LOG_FORMAT", "text"),
            audit_key=_env("LEDGERCI_AUDIT_KEY", ""),
            auto_migrate=_env("LEDGERCI_AUTO_MIGRATE", "true").lower() not in ("false", "0", "no"),
        )

    def missing_sqlite_store(self) -> Path | None:
        """The SQLite file the settings name, if it does not exist: a tool that only reads the
        store must say so rather than create an empty one (in whatever directory it ran)."""
        if not self.database_url.startswith("sqlite:///"):
            return None
        path = Path(self.database_url.removeprefix("sqlite:///"))
        return None if path.exists() else path
