"""The scripted executor: plays a job's `run:` as a list of steps, in the runner's own process.

A real implementation of the executor contract (runner/executor.py), without a process per job:
the runner, the command service, admission and the store do all they do for any job, and the
job itself costs nothing and does exactly what its script says, when the caller says. It is what
the fast tests run the runner's and admission's logic with (tests/support/in_process.py), in
seconds rather than through a cluster of processes.

One step per line of the script:

    say TEXT        print TEXT and a newline to the job's log
    write PATH TEXT write TEXT to PATH in the workspace (for artifacts and caches)
    show PATH       print PATH's text in the workspace to the log (what an earlier job or a
                    restored cache entry left there), or "PATH: absent" (also for a path
                    that leads out of the workspace)
    sleep SECONDS   wait that long
    wait GATE       wait until `open(GATE)` is called (from any thread)
    exit CODE       end with that exit code (without one, a script ends with 0)

A cancelled job stops at once wherever it is, as a killed process would; the timeout is kept as
the local executor keeps it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from pathlib import Path

from runner.executor import Execution, Outcome, OutputSink


class ScriptError(ValueError):
    """A line of the script is not a step."""


class ScriptedExecutor:
    name = "scripted"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened: set[str] = set()
        self._gates: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = defaultdict(list)
        self.started: list[Execution] = []  # every execution asked of it, in order
        self.cancelled: list[Execution] = []  # those stopped from outside (cancel, lost lease, stop)
        self._changed = threading.Condition(self._lock)

    def open(self, gate: str) -> None:
        """Let every job waiting at `gate`, now or later, go on. Safe from any thread."""
        with self._lock:
            self._opened.add(gate)
            waiting = self._gates.pop(gate, [])
        for loop, event in waiting:
            loop.call_soon_threadsafe(event.set)

    def wait_until(self, started: int = 0, cancelled: int = 0, timeout: float = 10.0) -> None:
        """Block (a test's thread) until at least that many executions started and were cancelled."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.started) >= started and len(self.cancelled) >= cancelled,
                                          timeout):
                raise TimeoutError(f"scripted executor: {len(self.started)} started, {len(self.cancelled)} "
                                   f"cancelled; waited for {started} and {cancelled}")

    async def run(self, execution: Execution, output: OutputSink) -> Outcome:
        try:
            steps = [parse_step(line) for line in execution.script.splitlines() if line.strip()]
        except ScriptError as wrong:
            return Outcome(exit_code=None, error=f"scripted executor: {wrong}")
        self._record(self.started, execution)
        try:
            async with asyncio.timeout(execution.timeout_seconds):
                for verb, argument in steps:
                    code = await self._play(verb, argument, execution.workdir, output)
                    if code is not None:
                        return Outcome(exit_code=code)
                return Outcome(exit_code=0)
        except TimeoutError:
            return Outcome(exit_code=None, error="timed out", timed_out=True)
        except asyncio.CancelledError:
            self._record(self.cancelled, execution)
            raise

    async def _play(self, verb: str, argument: str, workdir: Path, output: OutputSink) -> int | None:
        if verb == "say":
            await output(f"{argument}\n".encode())
        elif verb == "write":
            path, _, text = argument.partition(" ")
            target = workdir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        elif verb == "show":
            shown = (workdir / argument).resolve()
            inside = shown.is_relative_to(workdir.resolve()) and shown.is_file()
            text = shown.read_text() if inside else f"{argument}: absent"
            await output(f"{text}\n".encode())
        elif verb == "sleep":
            await asyncio.sleep(float(argument))
        elif verb == "wait":
            await self._gate(argument).wait()
        else:  # exit
            return int(argument)
        return None

    def _gate(self, gate: str) -> asyncio.Event:
        event = asyncio.Event()
        with self._lock:
            if gate in self._opened:
                event.set()
            else:
                self._gates[gate].append((asyncio.get_running_loop(), event))
        return event

    def _record(self, executions: list[Execution], execution: Execution) -> None:
        with self._changed:
            executions.append(execution)
            self._changed.notify_all()


def parse_step(line: str) -> tuple[str, str]:
    verb, _, argument = line.strip().partition(" ")
    if verb not in ("say", "write", "show", "sleep", "wait", "exit"):
        raise ScriptError(f"unknown step {verb!r} (say, write, show, sleep, wait, exit)")
    if verb == "exit" and not argument.strip().isdigit():
        raise ScriptError(f"exit needs a number, not {argument!r}")
    if verb == "sleep":
        try:
            float(argument)
        except ValueError:
            raise ScriptError(f"sleep needs seconds, not {argument!r}") from None
    if verb in ("wait", "write", "show") and not argument.strip():
        raise ScriptError(f"{verb} needs an argument")
    return verb, argument.strip() if verb != "say" else argument
