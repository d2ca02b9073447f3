"""Where each service's CPU goes: py-spy samples every Python service while a benchmark runs.

py-spy attaches from outside (no code in the services, no restart), samples only stacks that
are running (idle threads left out), and writes "collapsed" stacks: one line per distinct
stack, its frames separated by ';', then the sample count. `summary` turns one such file into
the functions that hold the most samples themselves (self) and the project's functions whose
callees hold the most (inclusive), which is the question "which of our code paths costs".
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_PACKAGES = ("domain/", "commands/", "projections/", "gateway/", "runner/", "ledgerci/", "gitcache/",
                    "sealing/")


def py_spy() -> str | None:
    beside_python = Path(sys.executable).with_name("py-spy")
    return str(beside_python) if beside_python.exists() else shutil.which("py-spy")


@contextmanager
def sampled(pids: dict[str, int], out_dir: Path, rate: int = 250) -> Iterator[dict[str, Path]]:
    """Sample each process until the block ends; yields where each one's stacks will be."""
    binary = py_spy()
    if binary is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install -e '.[bench]'")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: out_dir / f"{name.replace('#', '-')}.txt" for name in pids}
    samplers = [subprocess.Popen([binary, "record", "-p", str(pid), "-o", str(files[name]), "-f", "raw",
                                  "--nonblocking", "--gil", "-r", str(rate)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for name, pid in pids.items()]
    try:
        yield files
    finally:
        for sampler in samplers:
            sampler.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
        for sampler in samplers:
            sampler.wait(timeout=30)


def children(parent: int) -> list[int]:
    """The processes whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (and its reaped children: job processes) used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def summary(stacks_file: Path, top: int = 12) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    if not stacks_file.exists():
        return f"  ({stacks_file.name}: no samples)"
    for line in stacks_file.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if not frame.startswith("process ")
                  and not frame.startswith("thread ")]
        total += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            if any(f"({package}" in frame for package in PROJECT_PACKAGES):
                inclusive[frame] += count
    if not total:
        return f"  ({stacks_file.name}: no samples)"
    lines = [f"  {total} samples; self:"]
    lines += [f"    {count * 100 / total:5.1f}%  {frame}" for frame, count in own.most_common(top)]
    lines.append("  inclusive (project code):")
    lines += [f"    {count * 100 / total:5.1f}%  {frame}" for frame, count in inclusive.most_common(top)]
    return "\n".join(lines)
