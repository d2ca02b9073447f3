"""The runner's side of artifacts (domain/artifacts.py): the files earlier jobs left, put in
the workspace before the command runs; the files this attempt leaves, stored once it ends.

Only regular files inside the workspace are stored: a symbolic link is skipped, whatever it
points at, and nothing is read through one, so a job cannot make the runner read a file of
its own machine (the Docker executor's job sees only its workspace, the runner sees more).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Protocol

from nats.js.api import ObjectMeta, ObjectMetaOptions

from domain.artifacts import MAX_FILES_PER_JOB, ArtifactSpec, UploadedArtifact, object_name, path_problem
from domain.messages import ArtifactInput, JobDispatch
from objectstore import read_chunks

CHUNK_BYTES = 512 * 1024


class ObjectStore(Protocol):
    """What is used of nats-py's JetStream object store."""

    async def put(self, name: str, data: Any, meta: Any = None) -> Any: ...
    async def get(self, name: str, writeinto: Any = None) -> Any: ...
    async def list(self, ignore_deletes: bool = False) -> list[Any]: ...


class ArtifactError(Exception):
    """The attempt's files could not be stored or fetched: the job fails saying why."""


def matched_files(workdir: Path, spec: ArtifactSpec) -> list[str]:
    """The workspace's regular files the patterns name ("dir/": all under it), as "/"-separated
    paths relative to it, sorted; at most MAX_FILES_PER_JOB and each a path an artifact may have
    (else an ArtifactError that says which)."""
    root = workdir.resolve()
    found: set[str] = set()
    for pattern in spec.paths:
        try:
            matches = [root / pattern.rstrip("/")] if pattern.endswith("/") else root.glob(pattern)
            for match in matches:
                found.update(_regular_files(root, match))
                if len(found) > MAX_FILES_PER_JOB:
                    raise ArtifactError(f"the artifact paths match more than the {MAX_FILES_PER_JOB} files a job "
                                        "may leave (archive them into one)")
        except (OSError, ValueError, IndexError) as failed:
            raise ArtifactError(f"the artifact path {pattern!r} cannot be matched: {failed}") from None
    for path in found:
        if problem := path_problem(path):
            raise ArtifactError(f"the file {path[:100]!r} cannot be an artifact: expected {problem}")
    return sorted(found)


def _regular_files(root: Path, start: Path) -> list[str]:
    try:
        mode = os.lstat(start).st_mode
    except OSError:
        return []
    if not _inside(root, start):
        return []
    if stat.S_ISREG(mode):
        return [start.relative_to(root).as_posix()]
    if not stat.S_ISDIR(mode):
        return []  # a link, a socket, a device: never followed, never stored
    files = []
    for directory, subdirectories, names in os.walk(start):  # os.walk does not follow links
        here = Path(directory)
        files += [(here / name).relative_to(root).as_posix() for name in names
                  if stat.S_ISREG(os.lstat(here / name).st_mode)]
        subdirectories.sort()
        if len(files) > MAX_FILES_PER_JOB:
            break  # the caller says it is too many
    return files


def _inside(root: Path, path: Path) -> bool:
    """Whether `path` (itself not followed) lies under `root` with no link on the way."""
    parent = path.parent.resolve()
    return parent == root or root in parent.parents


async def store_outputs(store: ObjectStore, dispatch: JobDispatch, workdir: Path,
                        tenant_quota_bytes: int) -> list[UploadedArtifact]:
    """Store the attempt's files under names only this attempt writes, if the tenant's stored
    files leave room for them (else an ArtifactError that says so, and nothing is stored)."""
    assert dispatch.artifacts is not None
    paths = await asyncio.to_thread(matched_files, workdir, dispatch.artifacts)
    try:
        size = sum(os.lstat(workdir / path).st_size for path in paths)
    except OSError as failed:
        raise ArtifactError(f"an artifact went away before it was stored: {failed}") from None
    if paths:
        stored = await _stored_bytes(store, f"{dispatch.tenant_id}/")
        if stored + size > tenant_quota_bytes:
            raise ArtifactError(f"artifact quota exceeded: tenant {dispatch.tenant_id} stores {stored} bytes of its "
                                f"{tenant_quota_bytes}, and this job's {len(paths)} files are {size} bytes more")
    uploaded = []
    for path in paths:
        name = object_name(dispatch.tenant_id, dispatch.repository_id, dispatch.run_id, dispatch.job_id,
                           dispatch.attempt, path)
        try:
            fd = os.open(workdir / path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as file:
                info = await store.put(name, file, meta=chunked(name))
        except OSError as failed:
            raise ArtifactError(f"artifact {path} cannot be read: {failed.strerror}") from None
        except Exception as failed:
            raise ArtifactError(f"artifact {path} was not stored: {type(failed).__name__} {failed}") from None
        uploaded.append(UploadedArtifact(path=path, size=info.size, sha256=sha256_hex(info.digest)))
    return uploaded


def chunked(name: str, description: str | None = None) -> ObjectMeta:
    """An object's meta with chunks of CHUNK_BYTES: a quarter as many round trips as nats-py's
    128 KiB default, and still under NATS's default 1 MiB message limit."""
    return ObjectMeta(name=name, description=description, options=ObjectMetaOptions(max_chunk_size=CHUNK_BYTES))


async def _stored_bytes(store: ObjectStore, prefix: str) -> int:
    try:
        listed = await store.list(ignore_deletes=True)
    except Exception as failed:
        if "NotFound" in type(failed).__name__:  # an empty bucket
            return 0
        raise
    return sum(info.size or 0 for info in listed if info.name.startswith(prefix) and not info.deleted)


async def fetch_inputs(store: ObjectStore, inputs: list[ArtifactInput], workdir: Path) -> None:
    """Put what earlier jobs left at their paths in the workspace (each object's SHA-256 is
    checked as it is read). Each is written to a new file beside its place and renamed into it:
    a link the checkout or a job left there is replaced, never written through."""
    root = workdir.resolve()
    for item in inputs:
        target = root / item.path
        try:
            if not _inside(root, target):
                raise ArtifactError(f"artifact {item.path} would land outside the workspace")
            target.parent.mkdir(parents=True, exist_ok=True)
            if not _inside(root, target):  # a link among the directories made just now
                raise ArtifactError(f"artifact {item.path} would land outside the workspace")
            descriptor, partial = tempfile.mkstemp(dir=target.parent, prefix=".ledgerci-")
            try:
                with os.fdopen(descriptor, "wb") as file:
                    async for chunk in read_chunks(store, item.object):  # type: ignore[arg-type]
                        await asyncio.to_thread(file.write, chunk)
                os.replace(partial, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(partial)
        except ArtifactError:
            raise
        except Exception as failed:
            raise ArtifactError(f"artifact {item.path} of an earlier job could not be fetched: "
                                f"{type(failed).__name__} {failed}") from None


def sha256_hex(digest: str) -> str:
    """nats-py's "SHA-256=<base64url>" as hex."""
    return base64.urlsafe_b64decode(digest.split("=", 1)[1]).hex()

