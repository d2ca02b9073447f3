"""`ledgerci dev`'s runner, in a process of its own.

Everything else of `ledgerci dev` shares one process, and one interpreter lock: with the
runner inside it too, the machine's second core sat idle while the process ran out of the
first (≈60 no-op jobs/s). The runner talks to the rest over NATS only, as in production, so
it moves out unchanged: `ledgerci runner` as a child, with no database credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from ledgerci.children import dies_with_parent
from ledgerci.settings import Settings

log = logging.getLogger(__name__)

# A runner that died on its own is started again after this long (it never should).
RESTART_DELAY_SECONDS = 1.0
# What the runner needs of `ledgerci dev`'s settings; the rest it reads from the environment.
_WITHHELD = ("LEDGERCI_DATABASE_URL", "LEDGERCI_SECRET_KEY", "LEDGERCI_ADMIN_TOKEN", "LEDGERCI_AUDIT_KEY")


def runner_environment(settings: Settings) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _WITHHELD}
    env.update({
        "LEDGERCI_NATS_URL": settings.nats_url,
        "LEDGERCI_DATA_DIR": str(settings.data_dir),
        "LEDGERCI_EXECUTOR": settings.executor,
        "LEDGERCI_RUNNER_SLOTS": str(settings.runner_slots),
        "LEDGERCI_RUNNER_POOL": settings.runner_pool,
        "LEDGERCI_RUNNER_ID": settings.runner_id,
        "LEDGERCI_LOG_LEVEL": settings.log_level,
        "LEDGERCI_LOG_FORMAT": settings.log_format,
        "LEDGERCI_STOP_GRACE_SECONDS": str(settings.stop_grace_seconds),
    })
    return env


async def run_runner_process(settings: Settings, stop: asyncio.Event) -> None:
    """Keep one `ledgerci runner` child running until `stop`, then stop it as SIGTERM asks
    (running jobs get the grace period, then are handed back)."""
    while not stop.is_set():
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ledgerci.cli", "runner", env=runner_environment(settings),
            # If `ledgerci dev` dies, even by SIGKILL, its runner dies at once too, as a machine
            # that lost power would (its jobs die with it: they have the same death signal).
            preexec_fn=dies_with_parent(signal.SIGKILL),
            # Its own session: Ctrl-C reaches `ledgerci dev`, which stops the runner in order.
            start_new_session=True,
        )
        stopping = asyncio.create_task(stop.wait())
        exited = asyncio.create_task(child.wait())
        await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            stopping.cancel()
            if not stop.is_set():
                log.warning("the runner exited with %s; starting it again", exited.result())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RESTART_DELAY_SECONDS)
            continue
        child.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(exited, settings.stop_grace_seconds + 10)
        except TimeoutError:
            child.kill()
            await child.wait()

