"""Container start overhead per job: the Docker executor against the local one, side by side.

Both executors run the same one-line job (`echo ready`) on a fresh workspace, alternately in
one process, so that the machine's load at any moment weighs on both alike. Measured from the
executor's `run` being called: to the job's first output (how long before the script runs),
and to `run` returning (the whole per-job cost, container removal included). The images are
made locally (tests.support.docker_images); the Docker executor uses its default hardening.
The floor it is held to runs beside them: the CLI's `docker run --rm --network none` of the
same image and line, no hardening, no workspace (the issue's goal: executor ≤ that + 20 ms).

    .venv/bin/python -m bench.executors --runs 100
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import docker

from bench.latency import percentile, summary
from runner.docker import DockerExecutor, DockerSettings
from runner.executor import Execution, Executor, Outcome, OutputSink
from runner.local import LocalExecutor
from tests.support.docker_images import BUSYBOX_IMAGE, ensure_test_images

WARM_UP = 3


class DockerRunCli:
    """`docker run --rm --network none IMAGE sh -c SCRIPT`, as a user would type it."""

    name = "docker run (CLI)"

    async def run(self, job: Execution, output: OutputSink) -> Outcome:
        process = await asyncio.create_subprocess_exec(
            "docker", "run", "--rm", "--network", "none", job.image or BUSYBOX_IMAGE, "sh", "-c", job.script,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert process.stdout is not None
        while chunk := await process.stdout.read(65536):
            await output(chunk)
        return Outcome(exit_code=await process.wait())


async def measure(executor: Executor | DockerRunCli, base: Path) -> tuple[float, float]:
    """(ms to the first output, ms to `run` returning) for one job."""
    workdir = base / secrets.token_hex(6)
    workdir.mkdir()
    (workdir / "hello.txt").write_text("a file of the checkout\n")
    job = Execution(script="echo ready", env={"HOME": str(workdir), "PATH": os.environ["PATH"]}, workdir=workdir,
                    image=BUSYBOX_IMAGE, timeout_seconds=60, labels={"job": workdir.name, "run": "bench"})
    first: list[float] = []

    async def output(_: bytes) -> None:
        if not first:
            first.append(time.perf_counter())

    started = time.perf_counter()
    outcome = await executor.run(job, output)
    ended = time.perf_counter()
    shutil.rmtree(workdir)
    if outcome.exit_code != 0 or not first:
        raise RuntimeError(f"{executor.name}: the job failed: {outcome}")
    return (first[0] - started) * 1000, (ended - started) * 1000


async def main(runs: int) -> None:
    ensure_test_images()
    client = docker.from_env()
    executors: list[Executor | DockerRunCli] = [
        LocalExecutor(),
        DockerExecutor(DockerSettings(pull="never"), runner_id=f"bench-{secrets.token_hex(4)}", client=client),
        DockerRunCli(),
    ]
    samples: dict[str, list[tuple[float, float]]] = {executor.name: [] for executor in executors}
    with tempfile.TemporaryDirectory(prefix="ledgerci-bench-executors-") as base:
        for index in range(WARM_UP + runs):
            for executor in executors:
                sample = await measure(executor, Path(base))
                if index >= WARM_UP:
                    samples[executor.name].append(sample)
    info = client.version()
    client.close()

    print(f"{runs} jobs per executor, alternating; {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, Docker engine {info.get('Version')}")
    print("| measure | p50 ms | p99 ms | mean ms | n |")
    print("| --- | --- | --- | --- | --- |")
    for name, measured in samples.items():
        print(summary(f"{name}: run called → first output", [first for first, _ in measured]))
        print(summary(f"{name}: run called → run returned (whole job)", [whole for _, whole in measured]))
    local = percentile([whole for _, whole in samples["local"]], 0.5)
    container = percentile([whole for _, whole in samples["docker"]], 0.5)
    floor = percentile([whole for _, whole in samples[DockerRunCli.name]], 0.5)
    print(f"\ncontainer overhead per job (p50 docker - p50 local): {container - local:.1f} ms")
    print(f"executor against `docker run` (p50 docker - p50 docker run): {container - floor:+.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    sys.exit(asyncio.run(main(parser.parse_args().runs)))
