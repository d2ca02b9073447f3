"""The runner's reading and writing of a workspace for artifacts and caches, on real files:
what is matched and what never is (links out, too many), the keys' file hashes, and archives
that try to write outside the workspace."""

from __future__ import annotations

import io
import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from domain.artifacts import ArtifactSpec, path_problem
from runner.artifacts import ArtifactError, matched_files
from runner.caches import _tar, _untar, hash_files

pytestmark = pytest.mark.unit


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "dist" / "sub").mkdir(parents=True)
    (root / "dist" / "app.bin").write_bytes(b"app")
    (root / "dist" / "sub" / "notes.txt").write_text("notes")
    (root / "report.xml").write_text("<x/>")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key").write_text("do not read")
    (root / "dist" / "leak").symlink_to("/etc/passwd")
    (root / "linked").symlink_to(outside)
    return root


def test_files_are_matched_by_directory_and_glob_and_links_are_never_followed(workspace: Path) -> None:
    spec = ArtifactSpec(paths=["dist/", "report.xml", "linked/", "linked/*", "**/*.txt"])
    assert matched_files(workspace, spec) == ["dist/app.bin", "dist/sub/notes.txt", "report.xml"]


def test_more_files_than_a_job_may_leave_is_an_error_saying_so(workspace: Path) -> None:
    for i in range(205):
        (workspace / "dist" / f"f{i}").write_text("x")
    with pytest.raises(ArtifactError, match="more than the 200 files"):
        matched_files(workspace, ArtifactSpec(paths=["dist/"]))


@pytest.mark.parametrize("pattern", [".", "a//b", "**.txt", "x/./y", "dist/**x"])
def test_patterns_python_cannot_glob_are_refused_when_the_file_is_read(pattern: str) -> None:
    assert path_problem(pattern) is not None


def test_hash_files_is_the_same_for_the_same_files_and_empty_for_none(workspace: Path, tmp_path: Path) -> None:
    first = hash_files(workspace, ["dist/**/*", "report.xml"])
    assert first == hash_files(workspace, ["report.xml", "dist/**/*"]) and len(first) == 64
    (workspace / "report.xml").write_text("<y/>")
    assert hash_files(workspace, ["dist/**/*", "report.xml"]) != first
    assert hash_files(workspace, ["linked/*"]) == ""  # through a link: nothing
    assert hash_files(workspace, ["nothing*"]) == ""


def test_a_cache_archive_keeps_links_as_links_and_extracts_whole(workspace: Path, tmp_path: Path) -> None:
    venv = workspace / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to("/usr/bin/python3")  # as a virtualenv has it
    (venv / "tool").write_text("#!/bin/sh\n")
    archive = io.BytesIO()
    _tar(archive, [".venv/"], workspace, limit=10**9)
    archive.seek(0)
    target = tmp_path / "restored"
    target.mkdir()
    _untar(archive, target)
    assert os.readlink(target / ".venv" / "bin" / "python") == "/usr/bin/python3"
    assert (target / ".venv" / "bin" / "tool").read_text() == "#!/bin/sh\n"
    assert [p.name for p in target.iterdir()] == [".venv"]  # the staging directory is gone


def test_paths_over_the_quota_are_not_archived(workspace: Path) -> None:
    with pytest.raises(Exception, match="more than the tenant's 5 bytes"):
        _tar(io.BytesIO(), ["dist/"], workspace, limit=5)  # app.bin and notes.txt: 8 bytes


def _archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    archive.seek(0)
    return archive


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", data: bytes = b"") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize("members", [
    [_member("../escape", data=b"x")],
    [_member("out", tarfile.SYMTYPE, "/tmp/x"), _member("out/planted", data=b"x")],
    [_member("hard", tarfile.LNKTYPE, "/etc/passwd")],
    [_member("ok", data=b"fine"), _member("dev", tarfile.CHRTYPE)],
])
def test_an_archive_that_writes_outside_the_workspace_is_refused_and_changes_nothing(
        tmp_path: Path, members: list[tuple]) -> None:
    target = tmp_path / "ws"
    target.mkdir()
    (target / "kept.txt").write_text("mine")
    with pytest.raises(tarfile.TarError):
        _untar(_archive(*members), target)
    assert sorted(p.name for p in target.iterdir()) == ["kept.txt"]
    assert not Path("/tmp/x/planted").exists()


def test_the_planner_writes_the_tenants_limits_into_a_job_and_cuts_a_longer_expiry() -> None:
    from commands.plan_rules import within_tenant_cap
    from domain.caches import CacheSpec
    from domain.registry import Tenant
    from domain.workflow import JobSpec

    tenant = Tenant.create(tenant_id="t", name="t", weight=1, max_concurrent_jobs=1, max_queued_runs=1,
                           pushes_per_minute=1, actor="a", at=datetime.now(UTC))
    job = JobSpec(name="b", run="make", artifacts=ArtifactSpec(paths=["dist/"], expire_in_seconds=30 * 86400),
                  cache=CacheSpec(key="k", paths=[".venv/"]))
    (unchanged,) = within_tenant_cap([job], tenant)
    assert unchanged.artifacts == job.artifacts and unchanged.cache == job.cache  # no limits: the defaults
    tenant.update({"max_artifact_bytes": 1000, "max_cache_bytes": 2000, "max_artifact_days": 2}, datetime.now(UTC), "a")
    (limited,) = within_tenant_cap([job], tenant)
    assert (limited.artifacts.expire_in_seconds, limited.artifacts.quota_bytes) == (2 * 86400, 1000)
    assert limited.cache.quota_bytes == 2000
