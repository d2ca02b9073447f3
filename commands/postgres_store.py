"""The PostgreSQL event store: eventsourcing's, on connections whose lost clients PostgreSQL
notices within seconds.

eventsourcing appends in pipeline mode: BEGIN, `LOCK TABLE ledgerci_events IN EXCLUSIVE
MODE`, the INSERT, then a Sync. A writer cut off from PostgreSQL after its LOCK TABLE reached
the server and before its Sync did leaves a backend that holds the events table's lock while
it waits for the rest of a pipeline that never comes. `idle_in_transaction_session_timeout`
does not apply there (PostgreSQL arms it only after a Sync), and TCP on its own notices a peer
that went silent after a retransmission timeout of minutes, or, for a socket with nothing to
send, never: no one could append until the partition healed (tests/e2e/test_partitions.py saw
it). The server-side settings below make PostgreSQL's own socket give up on a client that does
not acknowledge for a few seconds, so its backend ends and the lock is freed within the other
writers' lock timeout.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, urlsplit

from eventsourcing.postgres import PostgresFactory

# The eventsourcing env key that carries session_options() to LostClientsPostgresFactory.
SESSION_OPTIONS_KEY = "LEDGERCI_SESSION_OPTIONS"

# Seconds until PostgreSQL probes an idle client, between probes, and unanswered probes
# before it gives up on it; and milliseconds data it sent may stay unacknowledged. A live
# client's kernel answers both whatever its process is doing, so only a client that is gone
# or cut off is ended: after about 8 s.
LOST_CLIENT_SETTINGS = {
    "tcp_keepalives_idle": 5,
    "tcp_keepalives_interval": 1,
    "tcp_keepalives_count": 3,
    "tcp_user_timeout": 8000,
}


def lost_client_options() -> str:
    """libpq's `options` (settings a session starts with) for LOST_CLIENT_SETTINGS."""
    return " ".join(f"-c {name}={value}" for name, value in LOST_CLIENT_SETTINGS.items())


def session_options(database_url: str, *, drop_lost_clients: bool = True) -> str:
    """libpq's `options` for every session a service opens: what the operator already asks
    (the URL's `options`, else PGOPTIONS, which an `options` given in code would override),
    then LOST_CLIENT_SETTINGS unless switched off (LEDGERCI_DB_DROP_LOST_CLIENTS=false: a
    connection pooler such as PgBouncer may refuse the `options` parameter). Empty: none."""
    given = parse_qs(urlsplit(database_url).query).get("options")
    operators = given[-1] if given else os.environ.get("PGOPTIONS", "")
    ours = lost_client_options() if drop_lost_clients else ""
    return " ".join(part for part in (operators, ours) if part)


class LostClientsPostgresFactory(PostgresFactory):
    """PERSISTENCE_MODULE for PostgreSQL (commands.store.eventsourcing_env)."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        # The pool opens on first use, so every connection it makes starts with these; the
        # kwargs dict is the pool's own (eventsourcing sets the password in it the same way).
        if options := env.get(SESSION_OPTIONS_KEY):
            self.datastore.pool.kwargs["options"] = options
