"""A writer of the event store that stops halfway through an append, as eventsourcing's
insert would if its network went away between the statements of its pipeline.

`python -m tests.support.stalled_writer URL`: on the store's own pooled connection (set up by
commands.store.eventsourcing_env, as every service's is), it sends BEGIN and the events
table's LOCK TABLE in pipeline mode, prints `sent`, and waits for a line on stdin; then it sends
the rest (an INSERT and the Sync), which a test has cut off by then, and waits to be killed.
"""

from __future__ import annotations

import sys
import time

from commands.app import LedgerApp
from commands.store import eventsourcing_env


def main(database_url: str) -> None:
    ledger = LedgerApp(env=eventsourcing_env(database_url))
    datastore = ledger.store.recorder.datastore
    with datastore.get_connection() as conn, conn.pipeline() as pipeline, conn.transaction():
        conn.execute("LOCK TABLE ledgerci_events IN EXCLUSIVE MODE")
        print("sent", flush=True)
        sys.stdin.readline()
        conn.execute("SELECT 1")
        pipeline.sync()  # blocks: nothing the cut-off process sends arrives
    time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1])
