"""Stored domain events as the outside sees them (the relay's payload, the audit API)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec

from domain.messages import EventMessage

_METADATA = {"originator_id", "originator_version", "timestamp", "originator_topic", "actor"}


def to_event_message(event: Any, position: int | None) -> EventMessage:
    """Turn an eventsourcing domain event into the public envelope (type, at, actor, data)."""
    event_type = type(event).__name__
    aggregate_type = type(event).__qualname__.split(".")[0]
    data = {k: _plain(v) for k, v in event.__dict__.items() if k not in _METADATA}
    return EventMessage(
        position=position or 0,
        aggregate_id=str(event.originator_id),
        aggregate_type=aggregate_type,
        version=event.originator_version,
        type=event_type,
        at=event.timestamp,
        actor=getattr(event, "actor", None),
        data=data,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    return msgspec.to_builtins(value)
