"""The operators' one-shot tools over the store: rebuild or verify the read models, verify
the audit chain, grant the services' role."""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

from commands.schema import grant_service_role
from ledgerci.resources import store
from ledgerci.settings import Settings
from projections.rebuild import switch_over
from projections.rebuild import verify as verify_read_models


async def rebuild_read_models(settings: Settings, *, verify: bool) -> int:
    """`ledgerci projections rebuild [--verify]`: 0 when done (or no difference), 1 otherwise.

    Both build fresh tables from the whole history while the system keeps working; --verify
    compares them with the live ones, a plain rebuild switches over to them."""
    async with store(settings) as (ledger, db):
        started = time.perf_counter()

        def events_after(position: int, limit: int) -> list:
            return list(ledger.store.events_after(position, limit))

        if verify:
            found, position = await asyncio.to_thread(verify_read_models, db, events_after)
            for line in found:
                print(line)
            print(f"{len(found)} difference(s) between the read model and the history up to position {position}")
            return 1 if found else 0
        applied, position = await asyncio.to_thread(switch_over, db, events_after)
        elapsed = time.perf_counter() - started
        print(f"rebuilt the read model from {applied} events up to position {position} and switched over in "
              f"{elapsed:.1f}s ({applied / max(elapsed, 1e-9):.0f} events/s)")
        return 0


async def verify_audit_chain(settings: Settings, run_id: UUID | None) -> int:
    """`ledgerci audit verify [RUN_ID|--all]`: 0 when every chain is intact, 1 otherwise."""
    async with store(settings, migrate_schema=False) as (ledger, _):
        started = time.perf_counter()
        checked, broken = await asyncio.to_thread(ledger.audit.verify_chain, run_id)
        elapsed = time.perf_counter() - started
        for found in broken:
            print(f"BROKEN {found}")
        what = f"run {run_id}" if run_id else "every stream"
        if checked == 0 and run_id is not None:
            print(f"run {run_id}: no events")
            return 1
        print(f"{what}: {checked} events checked in {elapsed:.1f}s, "
              f"{len(broken)} broken stream(s)" + ("" if broken else ", every chain intact"))
        return 1 if broken else 0


async def grant_role(settings: Settings, role: str) -> None:
    async with store(settings, migrate_schema=True) as (ledger, _):
        await asyncio.to_thread(grant_service_role, ledger, settings.database_url, role)
