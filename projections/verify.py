"""Compare the live read model with one rebuilt from the history, and say what differs."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from projections.runs import RunsProjection
from projections.schema import create_read_model_tables
from projections.sql import Database, open_database

COMPARED = {
    "lci_runs": "id, tenant_id, repository_id, commit_sha, ref, rerun, status, error, created_at, finished_at",
    "lci_jobs": "id, run_id, tenant_id, idx, name, status, attempt, runner_id, exit_code, error, "
                "queued_at, started_at, finished_at, pick_up_by, lease_expires_at, timeout_at",
}


def _rows(db: Database, table: str) -> dict[str, tuple]:
    rows = db.query(f"SELECT {COMPARED[table]} FROM {table}")
    return {str(row[0]): tuple(None if v is None else str(v) for v in row) for row in rows}


def differences(live: Database, history: Iterable[tuple[int, Any]]) -> list[str]:
    """Each difference between the live tables and a rebuild of `history` (up to the live
    tracked position, so a projector still catching up is not reported)."""
    tracked = RunsProjection(live).position()
    with tempfile.TemporaryDirectory() as scratch:
        rebuilt = open_database(f"sqlite:///{Path(scratch) / 'rebuild.db'}")
        try:
            create_read_model_tables(rebuilt)
            RunsProjection(rebuilt).apply((p, e) for p, e in history if p <= tracked)
            found = []
            for table, columns in COMPARED.items():
                want, have = _rows(rebuilt, table), _rows(live, table)
                names = [c.strip() for c in columns.split(",")]
                for key in sorted(want.keys() | have.keys()):
                    if key not in have:
                        found.append(f"{table} {key}: missing from the live table")
                    elif key not in want:
                        found.append(f"{table} {key}: in the live table, but no event made it")
                    elif want[key] != have[key]:
                        changed = [f"{n}: live {h!r}, history says {w!r}"
                                   for n, w, h in zip(names, want[key], have[key], strict=True) if w != h]
                        found.append(f"{table} {key}: " + "; ".join(changed))
            return found
        finally:
            rebuilt.close()
