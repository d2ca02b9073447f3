"""Snapshots of long runs: how often, and how a run's state is written as JSON.

A run gains an event per heartbeat (every lease/3 while a job runs), so a job of some hours
makes a stream of thousands of events. Every command reloads its run, so the store keeps a
snapshot every SNAPSHOT_EVERY events and a load reads the newest snapshot plus at most that
many events. Snapshots are derived data, stored beside the events and never part of the
evidence: deleting them all (`DELETE FROM ledgerci_snapshots`) only makes loading slower, and
`replay with and without snapshots` is tested to give the same state.

When the shape of a run's state changes, give `Run` a `class_version` and an upcaster (as for
events), or delete the snapshots when deploying the change.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from enum import Enum
from itertools import chain
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.application import AggregateNotFoundError, Repository
from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, Transcoding, UUIDAsHex

from domain.artifacts import StoredArtifact
from domain.concurrency_group import ConcurrencyGroup
from domain.job import Job
from domain.run import Run
from domain.status import JobStatus, RunStatus
from domain.workflow import JobSpec

SNAPSHOT_EVERY = 100
# A busy concurrency group gains three events per run of it, for ever.
SNAPSHOT_INTERVALS: dict[type, int] = {Run: SNAPSHOT_EVERY, ConcurrencyGroup: SNAPSHOT_EVERY}


class _TimedeltaAsSeconds(Transcoding):
    type = timedelta
    name = "timedelta_s"

    def encode(self, obj: timedelta) -> float:
        return obj.total_seconds()

    def decode(self, data: float) -> timedelta:
        return timedelta(seconds=data)


class _EnumAsValue(Transcoding):
    def __init__(self, enum: type) -> None:
        self.type = enum
        self.name = enum.__name__

    def encode(self, obj: Any) -> str:
        return obj.value

    def decode(self, data: str) -> Any:
        return self.type(data)


class _JobSpecAsDict(Transcoding):
    type = JobSpec
    name = "job_spec"

    def encode(self, obj: JobSpec) -> dict:
        return msgspec.to_builtins(obj)

    def decode(self, data: dict) -> JobSpec:
        return msgspec.convert(data, JobSpec)


class _StoredArtifactAsDict(Transcoding):
    type = StoredArtifact
    name = "stored_artifact"

    def encode(self, obj: StoredArtifact) -> dict:
        return {"path": obj.path, "attempt": obj.attempt, "size": obj.size, "sha256": obj.sha256,
                "object": obj.object, "expires_at": obj.expires_at}  # the datetime transcoded in turn

    def decode(self, data: dict) -> StoredArtifact:
        return StoredArtifact(**data)


class _JobAsDict(Transcoding):
    type = Job
    name = "job"

    def encode(self, obj: Job) -> dict:
        return dict(vars(obj))  # its values are transcoded in turn (UUID, spec, status, times)

    def decode(self, data: dict) -> Job:
        return Job(**data)


_STATE_TRANSCODINGS: list[Transcoding] = [
    _TimedeltaAsSeconds(), _EnumAsValue(JobStatus), _EnumAsValue(RunStatus), _JobSpecAsDict(), _JobAsDict(),
    _StoredArtifactAsDict(),
]
_TAGGED = {t.type: t for t in _STATE_TRANSCODINGS if issubclass(t.type, Enum) or t.type is Job}


def register_state_transcodings(transcoder: JSONTranscoder) -> None:
    """What a run's snapshot holds beyond eventsourcing's own types."""
    for transcoding in _STATE_TRANSCODINGS:
        transcoder.register(transcoding)


class SnapshotTranscoder(JSONTranscoder):
    """The JSON transcoder for snapshots.

    `json` writes an Enum that subclasses str as a bare string without asking the transcoder,
    so a run's status would come back as a str. Enums, and the jobs that hold them, are tagged
    before encoding instead, in the `{"_type_", "_data_"}` form the transcoder decodes.
    """

    def __init__(self) -> None:
        super().__init__()
        for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):  # what Application registers
            self.register(transcoding)
        register_state_transcodings(self)

    def encode(self, obj: Any) -> bytes:
        return super().encode(_tagged(obj))


def _tagged(value: Any) -> Any:
    transcoding = _TAGGED.get(type(value))
    if transcoding is not None:
        return {"_type_": transcoding.name, "_data_": _tagged(transcoding.encode(value))}
    if isinstance(value, dict):
        return {key: _tagged(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_tagged(item) for item in value]
    return value


class SnapshottingRepository(Repository):
    """eventsourcing's Repository, minus the snapshot lookup where no snapshot can exist.

    Snapshots exist only from version SNAPSHOT_EVERY on, and most runs never get there. A
    stream this process last saw shorter than that is read from its events alone. A stream it
    has not seen is read from its first SNAPSHOT_EVERY events: fewer came back, so that was all
    of it; otherwise its newest snapshot and the events after it are read. Either way one query
    for a short run, where asking the snapshot table first would cost a second on every command.
    (A stream that grew past a snapshot since this process saw it is still read correctly from
    all its events, only slower, once.)
    """

    def __init__(self, *args: Any, known_version: Callable[[UUID], int | None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.known_version = known_version

    def _reconstruct_aggregate(self, aggregate_id: Any, version: int | None, projector_func: Any) -> Any:
        known = self.known_version(aggregate_id)
        snapshots: list[Any] = []
        events: Any = None
        if self.snapshot_store is not None and (known is None or known >= SNAPSHOT_EVERY):
            if known is None:
                first = list(self.event_store.get(originator_id=aggregate_id, lte=version, limit=SNAPSHOT_EVERY))
                if len(first) < SNAPSHOT_EVERY:
                    events = first
            if events is None:
                snapshots = list(self.snapshot_store.get(originator_id=aggregate_id, desc=True, limit=1,
                                                         lte=version))
        if events is None:
            after = snapshots[0].originator_version if snapshots else None
            events = self.event_store.get(originator_id=aggregate_id, gt=after, lte=version)
        aggregate = projector_func(None, chain(snapshots, events))
        if aggregate is None:
            raise AggregateNotFoundError(f"Aggregate {aggregate_id!r} version {version!r} not found.")
        return aggregate
