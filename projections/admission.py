"""Whether a tenant may push now: its queued-runs quota and its push rate.

Both answers must be the same whichever gateway is asked, so both live in the shared
database, not in a gateway's memory:
- queued runs are counted in the runs read model (it follows the store within milliseconds,
  so a burst can pass the quota by the pushes of those milliseconds);
- pushes are counted per tenant in fixed one-minute windows with one conditional upsert, so two
  gateways together never accept more than `pushes_per_minute` in a calendar minute. Across a
  window's edge a tenant can push its quota at the end of one minute and again at the start of
  the next: the slack is one window, at most twice `pushes_per_minute` in any 60 seconds.
A refused push is answered 429 with `Retry-After`, and nothing is recorded for it.
"""

from __future__ import annotations

from datetime import datetime

from domain.errors import QuotaExceededError
from domain.registry import Tenant
from projections.sql import Database

WINDOW_SECONDS = 60
QUEUED_RETRY_AFTER_SECONDS = 5


class PushAdmission:
    def __init__(self, db: Database) -> None:
        self.db = db

    def admit(self, tenant: Tenant, now: datetime) -> None:
        """Raise QuotaExceededError if the tenant may not push now; else count the push."""
        queued = self.db.query("SELECT count(*) FROM lci_runs WHERE tenant_id = ? AND status = 'queued'",
                               (tenant.tenant_id,))[0][0]
        if queued >= tenant.max_queued_runs:
            raise QuotaExceededError(
                f"tenant {tenant.tenant_id!r} has {queued} queued runs, its max_queued_runs quota is "
                f"{tenant.max_queued_runs}: push again when some have started",
                retry_after=QUEUED_RETRY_AFTER_SECONDS,
            )
        seconds = int(now.timestamp())
        window = seconds - seconds % WINDOW_SECONDS
        with self.db.transaction() as cursor:
            counted = cursor.execute(
                "INSERT INTO lci_push_windows (tenant_id, window_start, pushes) VALUES (?, ?, 1) "
                "ON CONFLICT (tenant_id, window_start) DO UPDATE SET pushes = lci_push_windows.pushes + 1 "
                "WHERE lci_push_windows.pushes < ? RETURNING pushes",
                (tenant.tenant_id, window, tenant.pushes_per_minute),
            ).fetchone()
            if counted is not None and counted[0] == 1:  # a new window: the tenant's old ones can go
                cursor.execute("DELETE FROM lci_push_windows WHERE tenant_id = ? AND window_start < ?",
                               (tenant.tenant_id, window))
        if counted is None:
            raise QuotaExceededError(
                f"tenant {tenant.tenant_id!r} is over its pushes_per_minute quota of {tenant.pushes_per_minute}",
                retry_after=window + WINDOW_SECONDS - seconds,
            )
