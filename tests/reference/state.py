"""An aggregate's whole state as plain JSON values, to compare replays across code versions."""

from __future__ import annotations

from typing import Any

import msgspec


def aggregate_state(aggregate: Any) -> dict[str, Any]:
    """Every attribute of the aggregate (its id, version and times included), as builtins."""
    state = {name: value for name, value in vars(aggregate).items() if name != "_pending_events"}
    state["__type__"] = type(aggregate).__name__
    return msgspec.to_builtins(state, enc_hook=str, order="sorted")
