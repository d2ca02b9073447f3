"""Reading files at commits through one long-lived `git cat-file --batch` per mirror.

The planner reads `.ledgerci.yml` at the commit of every push. A `git cat-file blob`
process per push cost ≈2.5 ms and most of a core's worth of fork and exec under load; one
batch process per mirror answers the same question over a pipe in microseconds.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import IO


class BatchReader:
    """One `git cat-file --batch` on one repository, safe for threads (one question at a time).

    The process is started on first use and again after it died or after `restart()` (a fetch
    brought new packs it has not seen: git looks again on a miss, but a fresh process is the
    one behaviour git documents)."""

    def __init__(self, repository: Path, env: dict[str, str]) -> None:
        self.repository = repository
        self._env = env
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None

    def read(self, commit: str, path: str) -> bytes | None:
        """The blob at `path` in `commit`, or None if there is none (or it is not a blob)."""
        kind, content = self.object(f"{commit}:{path}")
        return content if kind == b"blob" else None

    def commit_object(self, commit: str) -> bytes | None:
        """The raw commit object (headers, a blank line, the message), or None."""
        kind, content = self.object(f"{commit}^{{commit}}")
        return content if kind == b"commit" else None

    def has_commit(self, commit: str) -> bool:
        kind, _ = self.object(f"{commit}^{{commit}}")
        return kind == b"commit"

    def restart(self) -> None:
        with self._lock:
            self._stop()

    def close(self) -> None:
        self.restart()

    def object(self, name: str) -> tuple[bytes | None, bytes]:
        """(type, content) of the object `name` names, or (None, b"") if there is none."""
        if "\n" in name:
            return None, b""  # one question per line: a newline cannot be asked
        with self._lock:
            try:
                return self._ask(name)
            except (OSError, ValueError):
                self._stop()  # the pipe broke (git died): ask once more, of a fresh one
                return self._ask(name)

    def _ask(self, name: str) -> tuple[bytes | None, bytes]:
        process = self._running()
        stdin, stdout = _pipes(process)
        stdin.write(name.encode() + b"\n")
        stdin.flush()
        header = stdout.readline()
        if not header:
            raise ValueError("git cat-file --batch closed its output")
        fields = header.split()
        if len(fields) != 3:  # "<name> missing" or "<name> ambiguous"
            return None, b""
        size = int(fields[2])
        content = stdout.read(size)
        stdout.read(1)  # the newline after every object
        if len(content) != size:
            raise ValueError("git cat-file --batch cut an object short")
        return fields[1], content

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                ["git", "cat-file", "--batch"], cwd=self.repository, env={**os.environ, **self._env},
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )
        return self._process

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for pipe in _pipes(process):
            pipe.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _pipes(process: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes]]:
    assert process.stdin is not None and process.stdout is not None
    return process.stdin, process.stdout
