"""Read-model tables. Thrown away and rebuilt from the event history at will."""

import re

from projections import artifacts, registry, status_outbox, webhook_outbox
from projections.sql import Database

READ_MODEL_TABLES = ("lci_tracking", "lci_runs", "lci_jobs", "lci_schedules", "lci_artifacts",
                     *registry.REGISTRY_TABLES)

TABLES = [
    """CREATE TABLE IF NOT EXISTS lci_tracking (
        projection TEXT PRIMARY KEY,
        position BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS lci_runs (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        repository_id TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        ref TEXT,
        rerun INTEGER NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        created_at TEXT NOT NULL,
        finished_at TEXT,
        position BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS lci_runs_by_tenant ON lci_runs (tenant_id, created_at, id)",
    "CREATE INDEX IF NOT EXISTS lci_runs_by_repository ON lci_runs (repository_id, created_at, id)",
    """CREATE TABLE IF NOT EXISTS lci_jobs (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        runner_id TEXT,
        exit_code INTEGER,
        error TEXT,
        queued_at TEXT,
        started_at TEXT,
        finished_at TEXT,
        pick_up_by TEXT,
        lease_expires_at TEXT,
        timeout_at TEXT,
        pool TEXT NOT NULL DEFAULT 'default',
        priority TEXT NOT NULL DEFAULT 'normal'
    )""",
    "CREATE INDEX IF NOT EXISTS lci_runs_by_tenant_status ON lci_runs (tenant_id, status)",
    # The schedules in force: those the newest planned push of each branch declared
    # (projections.runs). id: repository, branch and cron, one per line.
    """CREATE TABLE IF NOT EXISTS lci_schedules (
        id TEXT PRIMARY KEY,
        repository_id TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        branch TEXT NOT NULL,
        cron TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        declared_by TEXT NOT NULL,
        declared_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS lci_jobs_by_run ON lci_jobs (run_id, idx)",
    # The reaper's question: which queued or running attempts are past a deadline.
    "CREATE INDEX IF NOT EXISTS lci_jobs_active ON lci_jobs (status, lease_expires_at)",
    # Pushes counted per tenant and minute, shared by every gateway (projections.admission).
    # Not derived from events: a rebuild leaves it alone.
    """CREATE TABLE IF NOT EXISTS lci_push_windows (
        tenant_id TEXT NOT NULL,
        window_start BIGINT NOT NULL,
        pushes INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, window_start)
    )""",
    # Finished attempts' logs (projections.log_archive): the live LOGS stream may expire.
    # Not derivable from events: a rebuild leaves both tables alone. BYTEA is a BLOB to SQLite.
    """CREATE TABLE IF NOT EXISTS lci_job_logs (
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        content BYTEA NOT NULL,
        archived_at TEXT NOT NULL,
        PRIMARY KEY (job_id, attempt)
    )""",
    """CREATE TABLE IF NOT EXISTS lci_log_archive_tracking (
        id INTEGER PRIMARY KEY,
        position BIGINT NOT NULL
    )""",
    *registry.TABLES,
    *artifacts.TABLES,
    # Delivery bookkeeping: not derived from events, a rebuild leaves them alone.
    *status_outbox.TABLES,
    *webhook_outbox.TABLES,
]


def create_read_model_tables(db: Database) -> None:
    # Look before creating, as for columns below: CREATE INDEX IF NOT EXISTS takes a SHARE lock
    # on its table even when the index is there, and held across the other statements it
    # deadlocked with a projector writing the same tables (a relay restarted mid-run died of it).
    missing = [statement for statement in TABLES if not _exists(db, _created_name(statement))]
    with db.transaction(lock=True) as cursor:
        for statement in missing:
            cursor.execute(statement)
        # The tracking row exists from the start, so replicas always have a row to lock.
        cursor.execute("INSERT INTO lci_tracking (projection, position) VALUES ('runs', 0) "
                       "ON CONFLICT (projection) DO NOTHING")
    _add_missing_columns(db)


# Columns added after a table first shipped: tables made by an older version get them here
# (the default is right for every row an older version wrote).
ADDED_COLUMNS = [("lci_jobs", "pool", "TEXT NOT NULL DEFAULT 'default'"),
                 ("lci_jobs", "priority", "TEXT NOT NULL DEFAULT 'normal'"),
                 ("lci_runs", "commit_subject", "TEXT"), ("lci_runs", "commit_author", "TEXT"),
                 ("lci_runs", "concurrency_group", "TEXT"), ("lci_runs", "waiting", "TEXT"),
                 ("lci_runs", "schedule", "TEXT"), ("lci_runs", "scheduled_for", "TEXT"),
                 ("lci_repositories", "statuses", "INTEGER NOT NULL DEFAULT 0")]


def _add_missing_columns(db: Database) -> None:
    # Look before altering: ALTER TABLE takes an exclusive lock even when the column exists,
    # and every service runs this at start while projectors hold locks on the same tables
    # (they deadlocked). Only a table that lacks the column is altered, once per deployment.
    for table, column, definition in ADDED_COLUMNS:
        if _has_column(db, table, column):
            continue
        exists_clause = "IF NOT EXISTS " if db.dialect == "postgresql" else ""  # two at once: fine
        with db.transaction(lock=True) as cursor:
            cursor.execute(f"ALTER TABLE {table} ADD COLUMN {exists_clause}{column} {definition}")


def _created_name(statement: str) -> str:
    match = re.match(r"\s*CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", statement)
    assert match, f"not a CREATE ... IF NOT EXISTS: {statement[:60]}"
    return match[1]


def _exists(db: Database, name: str) -> bool:
    if db.dialect == "postgresql":  # tables and indexes, in the schema the connection uses
        return bool(db.query("SELECT to_regclass(?) IS NOT NULL", (name,))[0][0])
    return bool(db.query("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)))


def _has_column(db: Database, table: str, column: str) -> bool:
    if db.dialect == "postgresql":
        return bool(db.query("SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                             "AND table_name = ? AND column_name = ?", (table, column)))
    return column in {row[1] for row in db.query(f"PRAGMA table_info({table})")}
