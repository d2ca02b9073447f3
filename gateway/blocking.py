"""Calls into the (synchronous) event store and read model, with a deadline.

When PostgreSQL is away, its connection pool waits up to half a minute for a connection;
a client should hear "503, retry" in seconds instead. The call itself may still finish in
its thread afterwards: a push answered 503 can still land, and a retry of it then answers
200 with the same run (never a second run).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

STORE_DEADLINE_SECONDS = 5.0


class StoreUnavailableError(Exception):
    """The store did not answer in time."""


async def blocking(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return await asyncio.wait_for(asyncio.to_thread(function, *args, **kwargs), STORE_DEADLINE_SECONDS)
    except TimeoutError:
        raise StoreUnavailableError("the event store did not answer in time") from None
