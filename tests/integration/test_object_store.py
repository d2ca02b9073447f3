"""The object store as the runner uses it, against a real nats-server: of two writers of one
name exactly one is kept; a removed name can be written again; what earlier jobs left is put in
the workspace without writing through a link there; a cache entry round-trips with its links,
found by a restore key with an expression in it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import nats
import pytest
import pytest_asyncio

from commands.streams import stream_configs
from domain.artifacts import BUCKET as ARTIFACTS
from domain.caches import BUCKET as CACHES
from domain.caches import CacheReport, CacheSpec
from domain.messages import ArtifactInput, JobDispatch
from objectstore import purge, put_new, read_chunks
from runner.artifacts import fetch_inputs
from runner.caches import Caches

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def stores(fresh_nats_server) -> AsyncIterator[tuple]:
    nc = await nats.connect(fresh_nats_server.url)
    js = nc.jetstream()
    for config in stream_configs():
        if config.name in (f"OBJ_{ARTIFACTS}", f"OBJ_{CACHES}"):
            await js.add_stream(config)
    yield await js.object_store(ARTIFACTS), await js.object_store(CACHES)
    await nc.close()


async def content(store, name: str) -> bytes:
    return b"".join([chunk async for chunk in read_chunks(store, name)])


async def test_of_two_writers_of_one_name_one_is_kept_and_a_removed_name_is_free_again(stores, tmp_path) -> None:
    _, caches = stores
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"1" * 3_000_000)
    two.write_bytes(b"2" * 3_000_000)
    with open(one, "rb") as first, open(two, "rb") as second:
        results = await asyncio.gather(put_new(caches, "t/r/main/k", first, chunk_bytes=512 * 1024),
                                       put_new(caches, "t/r/main/k", second, chunk_bytes=512 * 1024))
    kept = [info for info in results if info is not None]
    assert len(kept) == 1
    stored = await content(caches, "t/r/main/k")
    assert stored in (one.read_bytes(), two.read_bytes()) and len(stored) == kept[0].size
    with open(one, "rb") as again:
        assert await put_new(caches, "t/r/main/k", again, chunk_bytes=512 * 1024) is None
    await purge(caches, "t/r/main/k")
    with open(two, "rb") as again:
        assert (await put_new(caches, "t/r/main/k", again, chunk_bytes=512 * 1024)) is not None
    assert await content(caches, "t/r/main/k") == two.read_bytes()


async def test_an_earlier_jobs_file_replaces_a_link_in_its_place_and_never_writes_through_it(stores, tmp_path) -> None:
    artifacts, _ = stores
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    workdir = tmp_path / "ws"
    workdir.mkdir()
    (workdir / "out.txt").symlink_to(victim)
    (workdir / "outdir").symlink_to(tmp_path)
    info = await artifacts.put("t/r/run/job/1/out.txt", b"payload")
    item = ArtifactInput(path="out.txt", object="t/r/run/job/1/out.txt", size=info.size, sha256="0" * 64)
    await fetch_inputs(artifacts, [item], workdir)
    assert victim.read_text() == "untouched"
    assert not (workdir / "out.txt").is_symlink() and (workdir / "out.txt").read_bytes() == b"payload"
    with pytest.raises(Exception, match="outside the workspace"):
        await fetch_inputs(artifacts, [ArtifactInput(path="outdir/x", object=item.object, size=7, sha256="0" * 64)],
                           workdir)
    assert not (tmp_path / "x").exists()


def dispatch(ref: str, cache: CacheSpec) -> JobDispatch:
    return JobDispatch(run_id="run", job_id="job", attempt=1, job_name="deps", tenant_id="acme",
                       repository_id="web", clone_url="file:///x", commit="0" * 40, ref=ref, script="true", env={},
                       image=None, timeout_seconds=60, idempotency_key="k", cache=cache)


async def test_a_cache_entry_round_trips_with_its_links_and_is_found_by_an_expanded_restore_key(stores,
                                                                                               tmp_path) -> None:
    _, store = stores
    caches = Caches(store, tenant_quota_bytes=10**9, scratch=tmp_path / "scratch")
    lines: list[str] = []

    async def say(line: str) -> None:
        lines.append(line)

    spec = CacheSpec(key="deps-${{ branch }}-${{ hashFiles('req.txt') }}", restore_keys=["deps-${{ branch }}-"],
                     paths=[".venv/"])
    saved_from = tmp_path / "first"
    (saved_from / ".venv" / "bin").mkdir(parents=True)
    (saved_from / ".venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    (saved_from / "req.txt").write_text("flask\n")
    first = dispatch("refs/heads/feature", spec)
    key = await caches.key(first, saved_from)
    report = await caches.save(first, CacheReport(key=key, restored="miss"), saved_from, say)
    assert report.saved_size and report.saved_size > 0

    later = tmp_path / "later"
    later.mkdir()
    (later / "req.txt").write_text("flask==3\n")  # another key: found by the restore key's prefix
    restored = await caches.restore(first, await caches.key(first, later), later, say)
    assert (restored.restored, restored.restored_key) == ("partial", key)
    assert os.readlink(later / ".venv" / "bin" / "python") == "/usr/bin/python3"
    other_branch = await caches.restore(dispatch("refs/heads/other", spec), "deps-other-x", tmp_path, say)
    assert other_branch.restored == "miss"  # feature's entry is not main's: other branches never see it

