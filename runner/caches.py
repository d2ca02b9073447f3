"""The runner's side of caches (domain/caches.py): the key worked out on the checkout, the
entry restored before the command, saved after a successful one, and a tenant's entries beyond
its quota removed, least recently used first.

An entry is one tar of the cache's paths in the JetStream object store; its description holds
when it was last restored (or saved). Extraction refuses members that would land outside the
workspace or link out of it (tarfile's "data" filter). A cache is a speed-up, never a reason
for a job to fail: what goes wrong restoring or saving is said in the job's log and the job
runs on as after a miss.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from nats.js.api import ObjectMeta

from domain.caches import (
    DEFAULT_BRANCH,
    CacheReport,
    CacheSpec,
    Restored,
    entry_name,
    expand_key,
    key_of,
    repository_prefix,
    scope,
    tenant_prefix,
)
from domain.messages import JobDispatch
from objectstore import DigestMismatch, purge, put_new, read_chunks
from runner.artifacts import CHUNK_BYTES, sha256_hex

log = logging.getLogger(__name__)
MAX_UNUSED = timedelta(days=30)  # an entry not restored (or saved) for this long goes at the next save
Say = Callable[[str], Awaitable[None]]


class CacheStore(Protocol):
    """What is used of nats-py's JetStream object store."""

    async def put(self, name: str, data: Any, meta: Any = None) -> Any: ...
    async def get(self, name: str, writeinto: Any = None) -> Any: ...
    async def get_info(self, name: str, show_deleted: bool = False) -> Any: ...
    async def list(self, ignore_deletes: bool = False) -> list[Any]: ...
    async def update_meta(self, name: str, meta: Any) -> Any: ...
    async def delete(self, name: str) -> Any: ...


def hash_files(workdir: Path, patterns: list[str]) -> str:
    """hashFiles(...): one SHA-256 over the regular files the globs match, in path order ("" if
    none, as GitHub's), so that the same files give the same key on every runner."""
    root = workdir.resolve()
    matched = sorted({path.relative_to(root).as_posix() for pattern in patterns for path in root.glob(pattern)
                      if stat.S_ISREG(os.lstat(path).st_mode) and root in path.resolve().parents})
    if not matched:
        return ""
    total = hashlib.sha256()
    for relative in matched:
        total.update(relative.encode() + b"\0" + hashlib.sha256((root / relative).read_bytes()).digest())
    return total.hexdigest()


class Caches:
    def __init__(self, store: CacheStore, *, tenant_quota_bytes: int, scratch: Path) -> None:
        self.store = store
        self.tenant_quota_bytes = tenant_quota_bytes
        self.scratch = scratch

    async def key(self, dispatch: JobDispatch, workdir: Path) -> str:
        assert dispatch.cache is not None
        return await self._expanded(dispatch, dispatch.cache.key, workdir)

    async def _expanded(self, dispatch: JobDispatch, template: str, workdir: Path) -> str:
        return await asyncio.to_thread(expand_key, template,
                                       hash_files=lambda patterns: hash_files(workdir, patterns),
                                       branch=_branch(dispatch), commit=dispatch.commit,
                                       repository=dispatch.repository_id, job=dispatch.job_name)

    async def restore(self, dispatch: JobDispatch, key: str, workdir: Path, say: Say) -> CacheReport:
        """Restore the entry of `key`, else of a restore key, on this branch, then on the default one."""
        spec = dispatch.cache
        assert spec is not None
        if not spec.pulls:
            return CacheReport(key=key)
        found = None
        try:
            prefixes = [await self._expanded(dispatch, template, workdir) for template in spec.restore_keys]
            found, result = await self._find(dispatch, prefixes, key)
            if found is None:
                await say(f"ledgerci: cache {key}: miss\n")
                return CacheReport(key=key, restored="miss")
            await self._extract(found.name, workdir)
            await self._touch(found.name)
        except Exception as failed:  # a cache never fails the job: run on as after a miss
            log.warning("restoring cache %s failed", key, exc_info=True)
            await say(f"ledgerci: cache {key}: not restored ({type(failed).__name__}: {failed}); as a miss\n")
            if found is not None and isinstance(failed, (tarfile.TarError, DigestMismatch)):
                await purge(self.store, found.name)  # unreadable: gone, so that it can be saved again
            return CacheReport(key=key, restored="miss")
        restored_key = key_of(found.name)
        await say(f"ledgerci: cache {key}: {result}" + (f" ({restored_key})" if result == "partial" else "") + "\n")
        return CacheReport(key=key, restored=result, restored_key=restored_key)

    async def save(self, dispatch: JobDispatch, report: CacheReport, workdir: Path, say: Say) -> CacheReport:
        """Save `paths` under the key, unless it was a hit or an entry of the key is there."""
        spec = dispatch.cache
        assert spec is not None
        if not spec.pushes or report.restored == "hit":
            return report
        name = entry_name(dispatch.tenant_id, dispatch.repository_id, _branch(dispatch), report.key)
        try:
            quota = spec.quota_bytes or self.tenant_quota_bytes  # the tenant's own, else the default
            info = None if await self._exists(name) else await self._store_tar(name, spec, workdir, quota)
            if info is None:  # there already, or another runner saved it first
                await say(f"ledgerci: cache {report.key}: kept as it was (an entry is never replaced)\n")
                return report
            await self._evict(dispatch.tenant_id, quota, keep=name)
        except Exception as failed:
            log.warning("saving cache %s failed", report.key, exc_info=True)
            await say(f"ledgerci: cache {report.key}: not saved ({type(failed).__name__}: {failed})\n")
            return report
        await say(f"ledgerci: cache {report.key}: saved ({info.size} bytes)\n")
        return CacheReport(key=report.key, restored=report.restored, restored_key=report.restored_key,
                           saved_size=info.size, saved_sha256=sha256_hex(info.digest))

    # ----- the store -----------------------------------------------------------------------------

    async def _find(self, dispatch: JobDispatch, restore_keys: list[str], key: str) -> tuple[Any, Restored]:
        branches = list(dict.fromkeys((_branch(dispatch), DEFAULT_BRANCH)))
        entries = None
        for branch in branches:
            name = entry_name(dispatch.tenant_id, dispatch.repository_id, branch, key)
            if await self._exists(name):
                return await self.store.get_info(name), "hit"
            if entries is None:
                entries = await self._entries(repository_prefix(dispatch.tenant_id, dispatch.repository_id))
            prefix = scope(dispatch.tenant_id, dispatch.repository_id, branch)
            for restore_key in restore_keys:
                candidates = [e for e in entries if e.name.startswith(prefix) and "/" not in e.name[len(prefix):]
                              and key_of(e.name).startswith(restore_key)]
                if candidates:
                    return max(candidates, key=lambda e: e.mtime), "partial"
        return None, "miss"

    async def _entries(self, prefix: str) -> list[Any]:
        try:
            listed = await self.store.list(ignore_deletes=True)
        except Exception as failed:
            if type(failed).__name__ == "NotFoundError":  # an empty bucket
                return []
            raise
        return [entry for entry in listed if entry.name.startswith(prefix) and not entry.deleted]

    async def _exists(self, name: str) -> bool:
        try:
            info = await self.store.get_info(name)
        except Exception as failed:
            if "NotFound" in type(failed).__name__:
                return False
            raise
        return not info.deleted

    async def _extract(self, name: str, workdir: Path) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.scratch) as archive:
            async for chunk in read_chunks(self.store, name):  # type: ignore[arg-type]
                await asyncio.to_thread(archive.write, chunk)
            archive.seek(0)
            await asyncio.to_thread(_untar, archive, workdir)

    async def _store_tar(self, name: str, spec: CacheSpec, workdir: Path, quota: int) -> Any:
        """The new entry's info; None if an entry of the name was saved first by another runner."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.scratch) as archive:
            await asyncio.to_thread(_tar, archive, spec.paths, workdir, quota)
            archive.seek(0)
            return await put_new(self.store, name, archive, chunk_bytes=CHUNK_BYTES,  # type: ignore[arg-type]
                                 description=_now())

    async def _touch(self, name: str) -> None:
        """Record the use, for least-recently-used eviction."""
        await self.store.update_meta(name, ObjectMeta(name=name, description=_now()))

    async def _evict(self, tenant_id: str, quota: int, keep: str) -> None:
        """Remove the tenant's entries unused for MAX_UNUSED, then its least recently used
        while they are over its quota."""
        entries = await self._entries(tenant_prefix(tenant_id))
        total = sum(entry.size or 0 for entry in entries)
        stale = (datetime.now(UTC) - MAX_UNUSED).isoformat()
        for entry in sorted(entries, key=_last_used):
            if entry.name == keep or (total <= quota and _last_used(entry) >= stale):
                continue
            await purge(self.store, entry.name)  # type: ignore[arg-type]
            total -= entry.size or 0
            log.info("cache entry %s evicted (tenant %s: %d bytes of its %d)", entry.name, tenant_id, total, quota)


def _last_used(entry: Any) -> str:
    return entry.description or entry.mtime or ""


def _branch(dispatch: JobDispatch) -> str:
    ref = dispatch.ref or ""
    return ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else ref


def _now() -> str:
    return datetime.now(UTC).isoformat()


class TooLarge(Exception):
    """The cache's paths hold more than the tenant may keep."""


def _tar(archive: Any, patterns: list[str], workdir: Path, limit: int) -> None:
    """The paths as one tar (links kept as links, never followed), refused past `limit` bytes of
    files: a sparse file of a terabyte fills no scratch disk."""
    root = workdir.resolve()
    total = 0

    def counted(member: tarfile.TarInfo) -> tarfile.TarInfo:
        nonlocal total
        total += member.size
        if total > limit:
            raise TooLarge(f"the cache's paths hold more than the tenant's {limit} bytes")
        return member

    with tarfile.open(fileobj=archive, mode="w") as tar:
        for pattern in patterns:
            matches = [root / pattern.rstrip("/")] if pattern.endswith("/") else sorted(root.glob(pattern))
            for match in matches:
                parent = match.parent.resolve()
                if os.path.lexists(match) and (parent == root or root in parent.parents):
                    tar.add(match, arcname=match.relative_to(root).as_posix(), filter=counted)


def _keeping_links(member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo:
    """tarfile's "data" filter, except that a symbolic link is kept whatever it points at (a
    virtualenv's bin/python is an absolute one): the runner never follows one, and "tar"
    checks still refuse anything written through a link to outside the workspace."""
    if member.issym():
        return tarfile.tar_filter(member, destination)
    return tarfile.data_filter(member, destination)


def _untar(archive: Any, workdir: Path) -> None:
    """Extract beside the workspace's files, then move them in: an archive refused halfway
    leaves the workspace as it was."""
    staging = Path(tempfile.mkdtemp(dir=workdir, prefix=".ledgerci-cache-"))
    try:
        with tarfile.open(fileobj=archive, mode="r") as tar:
            tar.extractall(staging, filter=_keeping_links)
        for entry in list(staging.iterdir()):
            _move_into(entry, workdir / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into(source: Path, target: Path) -> None:
    """Move `source` to `target`, merging into a directory that is there (what the checkout has
    stays unless the entry has the same file)."""
    if target.is_dir() and not target.is_symlink() and source.is_dir() and not source.is_symlink():
        for entry in list(source.iterdir()):
            _move_into(entry, target / entry.name)
        return
    if target.is_symlink() or target.is_file():
        target.unlink()  # the link itself, never what it points at
    elif target.is_dir():
        shutil.rmtree(target)
    os.replace(source, target)
