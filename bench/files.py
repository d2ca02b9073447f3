"""Artifacts and caches: upload and restore throughput of a directory, side by side with
`tar` + `cp` on the same disk, in one run (issue 20).

    .venv/bin/python -m bench.files --megabytes 200 --files 200 --rounds 3

A directory of FILES random files making MEGABYTES is stored and restored through the runner's
own code (runner/artifacts.py: a file per object; runner/caches.py: one tar per entry) against a
nats-server with `sync_interval: always` (as ledgerci dev and the deployments run it), and the
same directory is archived and copied with `tar -cf` + `cp`, and restored with `cp` + `tar -xf`,
each round in turn. Figures are MB/s of the directory's size, the median over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats

from commands.streams import stream_configs
from domain.artifacts import BUCKET as ARTIFACTS
from domain.artifacts import ArtifactSpec
from domain.caches import BUCKET as CACHES
from domain.caches import CacheReport, CacheSpec
from domain.messages import ArtifactInput, JobDispatch
from runner.artifacts import ObjectStore, fetch_inputs, store_outputs
from runner.caches import Caches
from tests.support.processes import NatsServer, make_base_dir


def make_directory(root: Path, megabytes: int, files: int) -> int:
    size = megabytes * 1024 * 1024 // files
    (root / "dir").mkdir(parents=True)
    for i in range(files):
        (root / "dir" / f"file-{i:04d}.bin").write_bytes(os.urandom(size))
    return size * files


def dispatch(attempt: int, **kwargs: object) -> JobDispatch:
    return JobDispatch(run_id="run", job_id="job", attempt=attempt, job_name="build", tenant_id="bench",
                       repository_id="repo", clone_url="file:///x", commit="0" * 40, ref="refs/heads/main",
                       script="true", env={}, image=None, timeout_seconds=60, idempotency_key="k", **kwargs)


async def timed(step: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await step()
    return time.perf_counter() - started


def shell(*argv: str) -> None:
    subprocess.run(argv, check=True)


async def measure(server: NatsServer, work: Path, total: int, rounds: int) -> dict[str, list[float]]:
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    for config in stream_configs():
        if config.name in (f"OBJ_{ARTIFACTS}", f"OBJ_{CACHES}"):
            config.max_bytes = -1  # the bench stores more than a deployment's 10 GiB over its rounds
            await js.add_stream(config)
    artifacts, caches_store = await js.object_store(ARTIFACTS), await js.object_store(CACHES)
    caches = Caches(caches_store, tenant_quota_bytes=1 << 40, scratch=work / "scratch")
    seconds: dict[str, list[float]] = {k: [] for k in ("tar+cp store", "cp+tar restore", "artifacts upload",
                                                       "artifacts restore", "cache save", "cache restore")}

    async def say(_: str) -> None:
        pass

    for attempt in range(1, rounds + 1):
        for step, took in (await one_round(attempt, work, artifacts, caches, say)).items():
            seconds[step].append(took)
    await nc.close()
    return seconds


async def one_round(attempt: int, work: Path, artifacts: ObjectStore, caches: Caches,
                    say: Callable[[str], Awaitable[None]]) -> dict[str, float]:
    source, archive, copy, restored = work / "src", work / "a.tar", work / "copy.tar", work / "restored"
    took = {"tar+cp store": await timed(lambda: asyncio.to_thread(
        lambda: (shell("tar", "-cf", str(archive), "-C", str(source), "dir"), shell("cp", str(archive), str(copy)),
                 shell("sync"))))}
    restored.mkdir()
    took["cp+tar restore"] = await timed(lambda: asyncio.to_thread(
        lambda: (shell("cp", str(copy), str(archive)), shell("tar", "-xf", str(archive), "-C", str(restored)),
                 shell("sync"))))
    shutil.rmtree(restored)

    job = dispatch(attempt, artifacts=ArtifactSpec(paths=["dir/"]))
    uploaded: list = []

    async def upload() -> None:
        uploaded.extend(await store_outputs(artifacts, job, source, 1 << 40))

    took["artifacts upload"] = await timed(upload)
    inputs = [ArtifactInput(path=u.path, object=f"bench/repo/run/job/{attempt}/{u.path}", size=u.size,
                            sha256=u.sha256) for u in uploaded]
    fetched = work / "fetched"
    fetched.mkdir()
    took["artifacts restore"] = await timed(lambda: fetch_inputs(artifacts, inputs, fetched))
    shutil.rmtree(fetched)

    cached = dispatch(attempt, cache=CacheSpec(key=f"bench-{attempt}", paths=["dir/"]))
    report = CacheReport(key=f"bench-{attempt}", restored="miss")
    took["cache save"] = await timed(lambda: caches.save(cached, report, source, say))
    into = work / "into"
    into.mkdir()
    took["cache restore"] = await timed(lambda: caches.restore(cached, f"bench-{attempt}", into, say))
    assert len(list((into / "dir").iterdir())) == len(list((source / "dir").iterdir()))
    shutil.rmtree(into)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = make_base_dir()
    work = Path(tempfile.mkdtemp(prefix="bench-files-", dir=base))
    server = NatsServer.create(base, sync_always=True)
    try:
        total = make_directory(work / "src", args.megabytes, args.files)
        seconds = asyncio.run(measure(server, work, total, args.rounds))
    finally:
        server.destroy()
        shutil.rmtree(work, ignore_errors=True)
    megabytes = total / 1024 / 1024
    print(f"{megabytes:.0f} MB in {args.files} files, {args.rounds} rounds, median:")
    print("| step | seconds | MB/s |")
    print("| --- | --- | --- |")
    for step, values in seconds.items():
        median = statistics.median(values)
        print(f"| {step} | {median:.2f} | {megabytes / median:.0f} |")


if __name__ == "__main__":
    main()
