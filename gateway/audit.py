"""The tamper-evident chain, verified by the gateway (`ledgerci audit verify`): a run's stream
for its tenant, every stream for the admin. The gateway holds the chain's key already (it
appends events), so a user needs no database access to check the history."""

from __future__ import annotations

import time
from uuid import UUID

from litestar import Controller, Request, get
from litestar.di import NamedDependency

from commands.app import LedgerApp
from commands.chain import Broken
from gateway.auth import require_admin
from gateway.blocking import blocking
from gateway.models import AuditReport, BrokenLink
from gateway.openapi import errors
from gateway.routes import principal_of, uuid_or_not_found


def _report(checked: int, broken: list[Broken], seconds: float) -> AuditReport:
    return AuditReport(
        checked=checked, intact=not broken, seconds=round(seconds, 3),
        broken=[BrokenLink(aggregate_id=str(b.originator_id), version=b.version,
                           type=b.topic.rsplit(":", 1)[-1].rsplit(".", 1)[-1], reason=b.reason) for b in broken],
    )


async def _verify(ledger: LedgerApp, aggregate_id: UUID | None) -> AuditReport:
    started = time.perf_counter()
    checked, broken = await blocking(ledger.audit.verify_chain, aggregate_id)
    return _report(checked, broken, time.perf_counter() - started)


class AuditController(Controller):
    path = "/api/v1"
    tags = ["audit"]

    @get("/runs/{run_id:str}/audit", operation_id="verifyRunChain", responses=errors(404))
    async def verify_run(self, request: Request, run_id: str, ledger: NamedDependency[LedgerApp]) -> AuditReport:
        """Recompute the run's chain of events; `broken` names the first event that breaks it."""
        run = await blocking(ledger.runs.get_run, uuid_or_not_found(run_id), principal_of(request))
        return await _verify(ledger, run.id)

    @get("/audit", operation_id="verifyEveryChain", guards=[require_admin], responses=errors(403))
    async def verify_all(self, ledger: NamedDependency[LedgerApp]) -> AuditReport:
        """Recompute every stream's chain in the store (admin only): one broken link per broken stream."""
        return await _verify(ledger, None)
