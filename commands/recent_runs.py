"""Runs the command service decided last, kept to decide the next command on them without
reading the store.

A runner's commands on a run come one after another (claim, report, the next job's claim),
and loading the run for each cost ≈0.3 ms of CPU (a query, decoding and replaying its
events). A kept run is at the version this process saved, but it may be stale: another
process or thread may have appended since. So:

- a kept run is lent to one decision at a time (`take` removes it), and kept again only by
  the code that owns it once it is done with it (`keep`);
- a decision made on a kept run counts only when it appends to the run itself, so that the
  save checks the run's version: a stale run's save conflicts, and the command is decided
  again on the run as stored;
- a decision on a kept run that appends nothing, or refuses, is made again on the run as
  stored: a stale run must never refuse what the stored one accepts.

(commands/runs.py, `RunCommands.runner_commands`, applies those rules.)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from uuid import UUID

from domain.run import Run

# Runs in flight at once, with room to spare: a run no longer kept is only read again.
MAX_KEPT = 4096


class RecentRuns:
    def __init__(self, max_kept: int = MAX_KEPT) -> None:
        self.max_kept = max_kept
        self._runs: OrderedDict[UUID, Run] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, run_id: UUID) -> Run | None:
        """The kept run, now the caller's alone (None: none kept)."""
        with self._lock:
            return self._runs.pop(run_id, None)

    def keep(self, run: Run) -> None:
        """Keep `run` (saved, no events pending) for the next command; a newer one stays."""
        with self._lock:
            kept = self._runs.get(run.id)
            if kept is not None and kept.version > run.version:
                return
            self._runs[run.id] = run
            self._runs.move_to_end(run.id)
            while len(self._runs) > self.max_kept:
                self._runs.popitem(last=False)

    def drop(self, run_id: UUID) -> None:
        with self._lock:
            self._runs.pop(run_id, None)
