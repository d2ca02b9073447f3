"""Choosing the event store from a database URL (PostgreSQL, or SQLite for `ledgerci dev`)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from commands.postgres_store import SESSION_OPTIONS_KEY, session_options

# The application's name becomes the events table's prefix: `ledgerci_events`.
APP_NAME = "ledgerci"


def eventsourcing_env(database_url: str, *, pool_size: int = 4, drop_lost_clients: bool = True) -> dict[str, str]:
    """Translate `postgresql://user:pw@host:port/db` or `sqlite:///path` to eventsourcing env.
    `drop_lost_clients`: commands.postgres_store.session_options."""
    parts = urlsplit(database_url)
    if parts.scheme in ("postgresql", "postgres"):
        env = {
            # eventsourcing's store, its sessions ended when their client is lost
            # (commands.postgres_store: why a cut-off writer could stop every append).
            "PERSISTENCE_MODULE": "commands.postgres_store:LostClientsPostgresFactory",
            "POSTGRES_DBNAME": unquote(parts.path.lstrip("/")) or "ledgerci",
            "POSTGRES_HOST": parts.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(parts.port or 5432),
            "POSTGRES_USER": unquote(parts.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(parts.password or ""),
            "POSTGRES_POOL_SIZE": str(pool_size),
            "POSTGRES_MAX_OVERFLOW": str(pool_size),
            "POSTGRES_CONNECT_TIMEOUT": "5",
            # No pre-ping: it costs a round trip per statement; the recorder retries a
            # statement that meets a dead connection instead.
            "POSTGRES_PRE_PING": "n",
            # Writers wait for the table lock rather than fail at once under contention.
            "POSTGRES_LOCK_TIMEOUT": "10",
            SESSION_OPTIONS_KEY: session_options(database_url, drop_lost_clients=drop_lost_clients),
        }
    elif parts.scheme == "sqlite":
        path = sqlite_path(database_url)
        path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            # eventsourcing's SQLite store, its writers in turn under one lock per file
            # (commands.sqlite_store: why the plain one answered 503 under load).
            "PERSISTENCE_MODULE": "commands.sqlite_store:OneWriterSQLiteFactory",
            "SQLITE_DBNAME": str(path),
            "SQLITE_LOCK_TIMEOUT": "10",
        }
    else:
        raise ValueError(f"unsupported database URL {database_url!r}: use postgresql:// or sqlite:///")
    # Tables are created by `ledgerci migrate` (commands.schema), never as a side effect.
    env["CREATE_TABLE"] = "n"
    return env


def is_postgres(database_url: str) -> bool:
    return urlsplit(database_url).scheme in ("postgresql", "postgres")


def sqlite_path(database_url: str) -> Path:
    # sqlite:///relative/path or sqlite:////absolute/path, as SQLAlchemy spells them.
    return Path(database_url.removeprefix("sqlite:///"))
