"""What every ledgerci process does the same way: log (text or JSON lines), and run until
SIGINT or SIGTERM asks it to stop."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from ledgerci.settings import Settings


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "message": record.getMessage(),
                 "process": record.process}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        formatter: logging.Formatter = JsonLogFormatter()
        formatter.converter = time.gmtime  # type: ignore[assignment]
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP call is noise


def _wait_for_children_on_the_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Learn that a child process exited from its pidfd, on the event loop (Linux 5.3+).

    Python 3.11's default watcher starts a thread per child to wait for it: a thread started
    and ended for every job the runner runs, 3 % of its CPU. Python 3.12 and later already
    use pidfds where they can (and deprecate choosing a watcher), so this is for 3.11 only."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))  # the kernel may not have pidfds
    except OSError:
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(loop)
    asyncio.set_child_watcher(watcher)


def run_until_signalled(main_coroutine: Callable[[asyncio.Event], object]) -> int:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        _wait_for_children_on_the_loop(loop)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main_coroutine(stop)

    asyncio.run(runner())
    return 0
