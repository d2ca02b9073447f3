"""What a previous life of this runner left on its machine when it died outright (SIGKILL,
power loss): the processes its local jobs started, and the jobs' workspaces.

A job's own shell dies with the runner (`setpriv --pdeathsig`, runner/local.py), but what the
shell started lives on, reparented to init: a `sleep 600 &`, a build server, a test database.
Its attempt is given up when the lease runs out and runs again elsewhere, so whatever it still
does races that retry. The store's side needs nothing from here (a lease that nobody renews
ends the attempt); the machine's side is this module: when a runner starts, before it takes a
job, nothing it owns can be running, so every process that carries its jobs' marks is killed,
every workspace is removed, and each is logged.

A job process is recognised by its environment, which every process it starts inherits unless
it clears it: `LEDGERCI_JOB_ID` set and `LEDGERCI_RUNNER_ID` equal to this runner's id. The
runner itself and its ancestors are never touched (a runner may run inside a CI job).
Containers of the Docker executor are its own business (`DockerExecutor.remove_leftovers`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path

log = logging.getLogger(__name__)

# A process may fork while we kill its group: look again until nothing is left, a few times.
KILL_ROUNDS = 10


def kill_left_over_jobs(runner_id: str) -> list[int]:
    """SIGKILL every process of a job of `runner_id` left by a previous life; their pids."""
    spared = _self_and_ancestors()
    killed: list[int] = []
    for _ in range(KILL_ROUNDS):
        found = [pid for pid in _job_processes(runner_id) if pid not in spared and pid not in killed]
        if not found:
            break
        for pid in found:
            log.warning("killing process %d (%s), left running by a job of runner %s before it restarted",
                        pid, _command_line(pid), runner_id)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(pid)
    return killed


def remove_left_over_workspaces(workspaces: Path) -> list[str]:
    """Remove every workspace under `workspaces` (at start, none belongs to a running job)."""
    removed = []
    for workspace in sorted(workspaces.iterdir()) if workspaces.is_dir() else []:
        log.warning("removing workspace %s, left by a job before the runner restarted", workspace.name)
        shutil.rmtree(workspace, ignore_errors=True)
        removed.append(workspace.name)
    return removed


def _job_processes(runner_id: str) -> list[int]:
    mark = f"LEDGERCI_RUNNER_ID={runner_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if mark in environment and any(item.startswith(b"LEDGERCI_JOB_ID=") for item in environment):
            found.append(int(entry.name))
    return found


def _self_and_ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
