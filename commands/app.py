"""The write side, assembled: one event store and the three things that change it or read it
for a reason of their own. Each changes for its own reasons:

- `registry` (commands/registry.py): tenants, tokens, repositories;
- `runs` (commands/runs.py): a push, the plan, cancel, re-run, the runners' and reaper's commands;
- `audit` (commands/audit_reads.py): history, the run as of a version, the chain recomputed;
- `store` (commands/ledger_store.py): eventsourcing, the one decide-and-retry path, the feed.

eventsourcing is synchronous: async callers run these methods in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from commands.audit_reads import AuditReads
from commands.ledger_store import LedgerStore
from commands.registry import Registry
from commands.runs import RunCommands, Timing


def utc_now() -> datetime:
    return datetime.now(UTC)


class LedgerApp:
    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = utc_now,
        timing: Timing | None = None,
        audit_key: bytes = b"",
    ):
        self.store = LedgerStore(env, audit_key)
        self.clock = clock
        self.registry = Registry(self.store, clock)
        self.runs = RunCommands(self.store, self.registry, clock, timing or Timing())
        self.audit = AuditReads(self.store, self.runs)

    def close(self) -> None:
        self.store.close()
