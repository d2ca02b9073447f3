"""Artifacts past their `expire_in` (domain/artifacts.py): removed from the object store, then
recorded as `ArtifactsExpired` in their run. Run by the reaper's periodic pass; any number of
reapers may run it at once.

Removal comes first: a pass that dies between the two finds the object gone next time (a
removal of what is not there is no error) and records it then; the run records each path once
(the aggregate leaves out what it no longer holds).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from itertools import groupby
from typing import Any, Protocol
from uuid import UUID

from commands.app import LedgerApp

log = logging.getLogger(__name__)


class Expiring(Protocol):
    run_id: str
    job_id: str
    path: str
    object: str


class Removable(Protocol):
    async def delete(self, name: str) -> Any: ...


class ArtifactExpiry:
    def __init__(self, app: LedgerApp, expiring: Callable[[datetime], list[Expiring]], store: Removable, *,
                 name: str = "reaper") -> None:
        self.app = app
        self.expiring = expiring
        self.store = store
        self.actor = name

    async def sweep(self) -> int:
        """One pass; the number of files it recorded as expired."""
        due = await asyncio.to_thread(self.expiring, self.app.clock())
        recorded = 0
        for (run_id, job_id), group in groupby(due, key=lambda item: (item.run_id, item.job_id)):
            items = list(group)
            try:
                for item in items:
                    await self._remove(item.object)
                await asyncio.to_thread(self.app.runs.expire_artifacts, UUID(run_id), job_id,
                                        [item.path for item in items], actor=self.actor)
                recorded += len(items)
            except Exception:
                log.exception("artifacts of job %s could not be expired; again next pass", job_id)
        return recorded

    async def _remove(self, name: str) -> None:
        try:
            await self.store.delete(name)
        except Exception as failed:
            if "NotFound" not in type(failed).__name__:
                raise
