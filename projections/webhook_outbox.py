"""The outgoing-webhook outbox: one delivery per (subscription, occurrence) that it matches,
written by the runs projector in the transaction that applies the event, then delivered at
least once by commands/webhook_sender.py.

The delivery's id derives from (subscription, run, event, job, attempt)
(domain.ids.delivery_id_for): re-applying an event, or a rebuild, lands on the same row (ON
CONFLICT DO NOTHING), and the receiver sees one id however often it is sent. The payload is the
run (and job) as the read model had it when the event was applied, so a late retry of
`run.started` still says "running". Delivery bookkeeping (attempts, what the receiver
answered) is not derived from events: a rebuild leaves these tables alone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol

import msgspec

from domain.ids import delivery_id_for
from domain.subscriptions import Filter, occurrences
from projections.sql import Cursor, Database
from projections.timestamps import rfc3339

CLAIM_SECONDS = 20.0  # twice a request's whole time (commands.outbound.TIMEOUT_SECONDS)

TABLES = [
    """CREATE TABLE IF NOT EXISTS lci_webhook_deliveries (
        id TEXT PRIMARY KEY,
        subscription_id TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        event TEXT NOT NULL,
        run_id TEXT NOT NULL,
        job_id TEXT,
        payload TEXT NOT NULL,
        position BIGINT NOT NULL,
        seq INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        since_redelivery INTEGER NOT NULL DEFAULT 0,
        next_at TEXT,
        delivered_at TEXT,
        last_status INTEGER,
        last_result TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS lci_webhook_deliveries_due ON lci_webhook_deliveries (delivered_at, next_at)",
    "CREATE INDEX IF NOT EXISTS lci_webhook_deliveries_by_subscription ON lci_webhook_deliveries "
    "(subscription_id, position, seq)",
    # The delivery log: one row per attempt, with what the receiver answered.
    """CREATE TABLE IF NOT EXISTS lci_webhook_attempts (
        delivery_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        at TEXT NOT NULL,
        status_code INTEGER,
        result TEXT NOT NULL,
        PRIMARY KEY (delivery_id, attempt)
    )""",
]


# ----- the body a receiver gets (docs/api.md "Outgoing webhooks") ------------------------------

class WebhookRun(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    repository_id: str
    commit: str
    ref: str | None
    status: str
    error: str | None
    commit_subject: str | None
    created_at: str
    finished_at: str | None


class WebhookJob(msgspec.Struct, kw_only=True):
    id: str
    name: str
    index: int
    status: str
    attempt: int
    runner_id: str | None
    exit_code: int | None
    error: str | None
    started_at: str | None
    finished_at: str | None


class Payload(msgspec.Struct, kw_only=True):
    """Stored with the delivery; the sender adds `delivered_at` to each attempt's body."""

    event: str
    delivery_id: str
    tenant: str
    occurred_at: str
    run: WebhookRun
    job: WebhookJob | None


_RUN = "id, tenant_id, repository_id, commit_sha, ref, status, error, commit_subject, created_at, finished_at"
_JOB = "id, name, idx, status, attempt, runner_id, exit_code, error, started_at, finished_at"


def queue_deliveries(cursor: Cursor, event: Any, position: int) -> bool:
    """Queue the event for every subscription of its run's tenant that takes it. A run of a
    tenant without subscriptions costs one indexed lookup; most events, none. True when a
    delivery was queued."""
    found = occurrences(event)
    if not found:
        return False
    run_id = found[0].run_id
    subscriptions = cursor.execute(
        "SELECT s.id, s.events, s.repository_id, s.branch, r.repository_id, r.ref FROM lci_webhook_subscriptions s "
        "JOIN lci_runs r ON r.tenant_id = s.tenant_id WHERE r.id = ? AND s.deleted_at IS NULL", (run_id,)).fetchall()
    if not subscriptions:
        return False
    run: WebhookRun | None = None
    queued = False
    for seq, occurrence in enumerate(found):
        takers = [row[0] for row in subscriptions
                  if Filter(tuple(row[1].strip(",").split(",")), row[2], row[3]).matches(occurrence.event, row[4],
                                                                                          row[5])]
        if not takers:
            continue
        run = run or WebhookRun(**dict(zip(WebhookRun.__struct_fields__, _one(cursor, _RUN, "lci_runs", run_id),
                                           strict=True)))
        job = None
        if occurrence.job_id is not None:
            job = WebhookJob(**dict(zip(WebhookJob.__struct_fields__, _one(cursor, _JOB, "lci_jobs", occurrence.job_id),
                                        strict=True)))
        for subscription_id in takers:
            delivery_id = str(delivery_id_for(subscription_id, run_id, occurrence.event, occurrence.job_id,
                                              occurrence.attempt))
            payload = Payload(event=occurrence.event, delivery_id=delivery_id, tenant=run.tenant_id,
                              occurred_at=rfc3339(event.timestamp), run=run, job=job)
            cursor.execute(
                "INSERT INTO lci_webhook_deliveries (id, subscription_id, tenant_id, event, run_id, job_id, payload, "
                "position, seq, created_at, next_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (delivery_id, subscription_id, run.tenant_id, occurrence.event, run_id, occurrence.job_id,
                 msgspec.json.encode(payload).decode(), position, seq, rfc3339(event.timestamp),
                 rfc3339(event.timestamp)))
            queued = True
    return queued


def _one(cursor: Cursor, columns: str, table: str, row_id: str) -> tuple:
    row = cursor.execute(f"SELECT {columns} FROM {table} WHERE id = ?", (row_id,)).fetchone()
    assert row is not None, f"{table} {row_id}: applied before its event, so it is there"
    return tuple(row)


# ----- the delivery log and the sender's queue ---------------------------------------------------

class DeliveryRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    subscription_id: str
    event: str
    run_id: str
    job_id: str | None
    created_at: str
    attempts: int
    next_at: str | None  # None: delivered, or given up after the last attempt
    delivered_at: str | None
    last_status: int | None
    last_result: str | None


class AttemptRow(msgspec.Struct, frozen=True, kw_only=True):
    attempt: int
    at: str
    status_code: int | None
    result: str


class DueDelivery(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    subscription_id: str
    event: str
    payload: str
    attempts: int


class Outcome(Protocol):  # commands.outbound.Outcome, as far as a row records it
    result: str
    status_code: int | None


_COLUMNS = ("id, subscription_id, event, run_id, job_id, created_at, attempts, next_at, delivered_at, last_status, "
            "last_result")


def _delivery(row: tuple) -> DeliveryRow:
    return DeliveryRow(**dict(zip(DeliveryRow.__struct_fields__, row, strict=True)))


class WebhookOutbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    def due(self, now: datetime, limit: int = 50) -> list[DueDelivery]:
        """Deliveries whose time has come, each claimed for CLAIM_SECONDS: a second projector
        replica asking at the same moment gets others, or none (a sender that dies holding one
        leaves it due again when the claim runs out)."""
        # `attempts` counts every try (the log's numbers); a redelivery's retries count from it anew.
        rows = self.db.query("SELECT id, subscription_id, event, payload, attempts - since_redelivery, next_at "
                             "FROM lci_webhook_deliveries WHERE delivered_at IS NULL AND next_at <= ? "
                             "ORDER BY position, seq LIMIT ?", (rfc3339(now), limit))
        claimed = []
        with self.db.transaction() as cursor:
            for row in rows:
                # RETURNING, not rowcount: PostgreSQL's pipeline mode knows a count only once fetched.
                won = cursor.execute("UPDATE lci_webhook_deliveries SET next_at = ? WHERE id = ? AND next_at = ? "
                                     "AND delivered_at IS NULL RETURNING id",
                                     (rfc3339(now + timedelta(seconds=CLAIM_SECONDS)), row[0], row[5])).fetchone()
                if won is not None:
                    claimed.append(DueDelivery(id=row[0], subscription_id=row[1], event=row[2], payload=row[3],
                                               attempts=row[4]))
        return claimed

    def release(self, row_ids: list[str], at: datetime) -> None:
        """Claimed rows not tried (their receiver failed first): due again at once."""
        with self.db.transaction() as cursor:
            for row_id in row_ids:
                cursor.execute("UPDATE lci_webhook_deliveries SET next_at = ? WHERE id = ? AND delivered_at IS NULL",
                               (rfc3339(at), row_id))

    def delivered(self, row_id: str, at: datetime, outcome: Outcome) -> None:
        self._attempted(row_id, at, outcome, "delivered_at = ?, next_at = NULL", (rfc3339(at),))

    def failed(self, row_id: str, at: datetime, retry_at: datetime | None, outcome: Outcome) -> None:
        self._attempted(row_id, at, outcome, "next_at = ?", (rfc3339(retry_at) if retry_at else None,))

    def _attempted(self, row_id: str, at: datetime, outcome: Outcome, change: str, args: tuple) -> None:
        with self.db.transaction() as cursor:
            row = cursor.execute("UPDATE lci_webhook_deliveries SET attempts = attempts + 1, last_status = ?, "
                                 f"last_result = ?, {change} WHERE id = ? RETURNING attempts",
                                 (outcome.status_code, outcome.result, *args, row_id)).fetchone()
            cursor.execute("INSERT INTO lci_webhook_attempts (delivery_id, attempt, at, status_code, result) "
                           "VALUES (?, ?, ?, ?, ?) ON CONFLICT (delivery_id, attempt) DO NOTHING",
                           (row_id, row[0], rfc3339(at), outcome.status_code, outcome.result))

    def of_subscription(self, subscription_id: str, limit: int) -> list[DeliveryRow]:
        """The newest first."""
        rows = self.db.query(f"SELECT {_COLUMNS} FROM lci_webhook_deliveries WHERE subscription_id = ? "
                             "ORDER BY position DESC, seq DESC LIMIT ?", (subscription_id, limit))
        return [_delivery(row) for row in rows]

    def get(self, subscription_id: str, delivery_id: str) -> tuple[DeliveryRow, str, list[AttemptRow]] | None:
        """The delivery, its payload and its attempts; None unless it is the subscription's."""
        rows = self.db.query(f"SELECT {_COLUMNS}, payload FROM lci_webhook_deliveries WHERE id = ? "
                             "AND subscription_id = ?", (delivery_id, subscription_id))
        if not rows:
            return None
        attempts = self.db.query("SELECT attempt, at, status_code, result FROM lci_webhook_attempts "
                                 "WHERE delivery_id = ? ORDER BY attempt", (delivery_id,))
        return (_delivery(rows[0][:-1]), rows[0][-1],
                [AttemptRow(attempt=a[0], at=a[1], status_code=a[2], result=a[3]) for a in attempts])

    def redeliver(self, subscription_id: str, delivery_id: str, now: datetime) -> bool:
        """Send it again now, delivered or given up (same id: the receiver can tell a repeat),
        with its retries anew; its earlier attempts stay in the log."""
        with self.db.transaction() as cursor:
            changed = cursor.execute("UPDATE lci_webhook_deliveries SET next_at = ?, delivered_at = NULL, "
                                     "since_redelivery = attempts "
                                     "WHERE id = ? AND subscription_id = ? RETURNING id",
                                     (rfc3339(now), delivery_id, subscription_id)).fetchone()
        return changed is not None
