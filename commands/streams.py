"""The JetStream streams ledgerci uses, declared in one place and created idempotently."""

from __future__ import annotations

import asyncio
import logging
import time

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, ServiceUnavailableError

from domain.artifacts import BUCKET as ARTIFACTS_BUCKET
from domain.artifacts import MAX_EXPIRE_SECONDS
from domain.caches import BUCKET as CACHES_BUCKET
from domain.messages import (
    DEAD_STREAM,
    DEAD_SUBJECT_PREFIX,
    EVENTS_STREAM,
    EVENTS_SUBJECT_PREFIX,
    JOBS_STREAM,
    JOBS_SUBJECT_PREFIX,
    LOGS_STREAM,
    LOGS_SUBJECT_PREFIX,
)

log = logging.getLogger(__name__)

# The dedup window must outlast any relay restart: duplicates older than this are still
# dropped by consumers' tracking, but the stream itself only remembers ids this long.
DUPLICATE_WINDOW_SECONDS = 600.0
# A cluster still electing its leaders, or a slow host, answers stream requests late or with
# "unavailable": a service starting then waits this long for the streams rather than dying.
STREAMS_PATIENCE_SECONDS = 60.0
STREAMS_RETRY_SECONDS = 0.5
LIVE_LOG_RETENTION_SECONDS = 7 * 24 * 3600.0
ARTIFACTS_MAX_BYTES = 10 * 1024**3
CACHES_MAX_BYTES = 10 * 1024**3


def stream_configs(replicas: int = 1) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=[f"{EVENTS_SUBJECT_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
        ),
        StreamConfig(
            name=JOBS_STREAM,
            subjects=[f"{JOBS_SUBJECT_PREFIX}.>"],
            # A dispatched attempt is taken by exactly one runner and removed once acked.
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
        ),
        StreamConfig(
            name=LOGS_STREAM,
            subjects=[f"{LOGS_SUBJECT_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=120.0,
            discard=DiscardPolicy.OLD,
            max_bytes=4 * 1024**3,
            # Finished logs are archived in the database (projections.log_archive) within
            # moments; the live copy only has to outlast an archiver that is down for a while.
            max_age=LIVE_LOG_RETENTION_SECONDS,
        ),
        # The artifacts' object store (domain/artifacts.py): what outlives every artifact's
        # expiry goes. Full, a new upload fails (its job says so) and nothing stored is lost.
        _object_store(ARTIFACTS_BUCKET, replicas, ARTIFACTS_MAX_BYTES, max_age=float(MAX_EXPIRE_SECONDS)),
        # The caches' object store (domain/caches.py). No age limit: a restore rewrites an
        # entry's name (its last use) but not its chunks, which an age limit would remove under
        # a live name; entries go by use instead (runner/caches.py).
        _object_store(CACHES_BUCKET, replicas, CACHES_MAX_BYTES),
        StreamConfig(
            name=DEAD_STREAM,
            subjects=[f"{DEAD_SUBJECT_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
        ),
    ]


def _object_store(bucket: str, replicas: int, max_bytes: int, max_age: float | None = None) -> StreamConfig:
    """A JetStream object store's stream as nats-py's create_object_store makes it: made here so
    that it is made, and kept up to date, like every stream."""
    return StreamConfig(
        name=f"OBJ_{bucket}", subjects=[f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"], storage=StorageType.FILE,
        num_replicas=replicas, max_age=max_age, max_bytes=max_bytes, discard=DiscardPolicy.NEW,
        allow_rollup_hdrs=True, allow_direct=True,
    )


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> None:
    deadline = time.monotonic() + STREAMS_PATIENCE_SECONDS
    for config in stream_configs(replicas):
        while True:
            try:
                await _ensure_stream(js, config)
                break
            except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as slow:
                if time.monotonic() > deadline:
                    raise
                # Safe to repeat: adding a stream that exists with the same settings is a no-op.
                log.warning("JetStream did not create stream %s yet (%r); trying again", config.name, slow)
                await asyncio.sleep(STREAMS_RETRY_SECONDS)


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with other settings (an older version of ours): bring it up to date.
        await js.update_stream(config)
