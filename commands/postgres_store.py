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

from typing import Any

from eventsourcing.postgres import PostgresFactory

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


class LostClientsPostgresFactory(PostgresFactory):
    """PERSISTENCE_MODULE for PostgreSQL (commands.store.eventsourcing_env)."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        # The pool opens on first use, so every connection it makes starts with these; the
        # kwargs dict is the pool's own (eventsourcing sets the password in it the same way).
        self.datastore.pool.kwargs["options"] = lost_client_options()
