"""Artifacts: files a job leaves for the jobs after it and for people to download.

A job's `artifacts: {paths, expire_in, when}` names files relative to its workspace. The runner
uploads each file it matches to the JetStream object store after the job's command ends and
before it reports the outcome; the outcome's report lists them, and the run records one
`ArtifactUploaded` per file in the same save as the outcome, so an outcome never refers to a
file that is not stored, and a runner killed mid-upload records nothing for its attempt.

An object's name is made from (tenant, repository, run, job, attempt, path) by the command
service, never taken from a runner or a job: a tenant's objects cannot be named by another's
run, and an attempt writes only its own (a retry never overwrites what an earlier one left).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal, cast, get_args

import msgspec

from domain.workflow_file import RawArtifacts, field_error
from domain.yaml_lines import Located, Path

DEFAULT_EXPIRE_SECONDS = 7 * 24 * 3600
MAX_EXPIRE_SECONDS = 90 * 24 * 3600
MAX_PATTERNS = 20
MAX_FILES_PER_JOB = 200  # each is an event in the run's history
MAX_NAME_CHARS = 255
BUCKET = "LEDGERCI_ARTIFACTS"  # the JetStream object store they live in

ArtifactWhen = Literal["on_success", "on_failure", "always"]
ARTIFACT_WHEN: tuple[ArtifactWhen, ...] = get_args(ArtifactWhen)

_DURATION = re.compile(r"(\d{1,9})([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# What a stored name may hold: printable, no backslash (a path on one system is the same on all).
_NAME = re.compile(r"[^\x00-\x1f\x7f\\]{1,255}")


class ArtifactSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    paths: list[str]  # globs relative to the workspace; "dir/" is everything under it
    expire_in_seconds: int = DEFAULT_EXPIRE_SECONDS
    when: ArtifactWhen = "on_success"
    # The tenant's byte quota when the run was planned (None: the runner's default).
    quota_bytes: int | None = None

    def wanted(self, succeeded: bool) -> bool:
        """Whether an attempt that ended so uploads its artifacts."""
        return self.when == "always" or (self.when == "on_success") == succeeded


class UploadedArtifact(msgspec.Struct, frozen=True, kw_only=True):
    """What a runner reports of one file it stored: checked, never trusted for the object's name."""

    path: str  # relative to the workspace, "/"-separated
    size: int
    sha256: str  # hex


class StoredArtifact(msgspec.Struct, frozen=True, kw_only=True):
    """An artifact as the run holds it."""

    path: str
    attempt: int
    size: int
    sha256: str
    object: str  # its name in the object store (object_name)
    expires_at: datetime


def path_problem(path: str) -> str | None:
    """Why `path` cannot name a file in a workspace (None: it can)."""
    if not _NAME.fullmatch(path):
        return "a path of 1 to 255 printable characters, without a backslash"
    if path.startswith("/"):
        return "a path relative to the workspace, not an absolute one"
    parts = path.removesuffix("/").split("/")
    if ".." in parts:
        return 'a path inside the workspace: ".." is not allowed'
    if any(part in ("", ".") for part in parts):
        return 'a path without empty or "." parts, like dist/app.bin'
    if any("**" in part and part != "**" for part in parts):
        return '"**" only as a whole part of the path, as in dist/**/*.whl'
    return None


_SHA256 = re.compile(r"[0-9a-f]{64}")


def uploads_problem(spec: ArtifactSpec | None, uploaded: list[UploadedArtifact]) -> str | None:
    """Why a runner's report of stored files cannot be recorded (None: it can)."""
    if spec is None:
        return "the job lists no artifacts"
    if len(uploaded) > MAX_FILES_PER_JOB:
        return f"{len(uploaded)} files, over the {MAX_FILES_PER_JOB} a job may leave"
    paths = [artifact.path for artifact in uploaded]
    if len(set(paths)) != len(paths):
        return "a path reported twice"
    for artifact in uploaded:
        if problem := path_problem(artifact.path):
            return f"{artifact.path[:100]!r}: {problem}"
        if artifact.size < 0 or not _SHA256.fullmatch(artifact.sha256):
            return f"{artifact.path[:100]!r}: no size or SHA-256"
    return None


def expire_seconds(text: int | str) -> int | None:
    """ "7d", "12h", "30m", "90s" or seconds, within 1 second and 90 days; None if not one."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    seconds = int(match[1]) * _UNIT_SECONDS[match[2]] if match else text
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not 0 < seconds <= MAX_EXPIRE_SECONDS:
        return None
    return seconds


def object_name(tenant_id: str, repository_id: str, run_id: str, job_id: str, attempt: int, path: str) -> str:
    return f"{tenant_id}/{repository_id}/{run_id}/{job_id}/{attempt}/{path}"


def artifact_name(job_name: str, path: str) -> str:
    """How the API names an artifact of a run: the job's name, then the file's path."""
    return f"{job_name}/{path}"


def compiled_artifacts(raw: RawArtifacts | None, path: Path, at: Located) -> ArtifactSpec | None:
    if raw is None:
        return None
    if not 1 <= len(raw.paths) <= MAX_PATTERNS:
        raise field_error(f"expected 1 to {MAX_PATTERNS} paths, got {len(raw.paths)}", (*path, "paths"), at)
    for i, pattern in enumerate(raw.paths):
        if problem := path_problem(pattern):
            raise field_error(f'"{pattern[:100]}": expected {problem}', (*path, "paths", i), at)
    seconds = expire_seconds(raw.expire_in)
    if seconds is None:
        raise field_error(f'expected a duration like "7d", "12h", "30m" of at most 90 days, got "{raw.expire_in}"',
                          (*path, "expire_in"), at)
    if raw.when not in ARTIFACT_WHEN:
        raise field_error(f'expected one of: {", ".join(ARTIFACT_WHEN)}, got "{raw.when}"', (*path, "when"), at)
    return ArtifactSpec(paths=raw.paths, expire_in_seconds=seconds, when=cast(ArtifactWhen, raw.when))
