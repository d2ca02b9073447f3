"""Repository mirrors against real git: files read at commits through one long-lived
`git cat-file --batch` per mirror, which must see commits fetched after it started and
survive its git process dying."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from gitcache import GitMirrors
from tests.support.git_repo import GitRepo

pytestmark = pytest.mark.integration


def test_reads_files_at_commits_through_one_batch_process(tmp_path: Path):
    repo = GitRepo(tmp_path / "repo")
    first = repo.commit({".ledgerci.yml": "first\n", "bin.dat": "\x00\x01two lines\nand a half"})
    mirrors = GitMirrors(tmp_path / "mirrors")
    try:
        assert mirrors.read_file("r", repo.clone_url, first, ".ledgerci.yml") == b"first\n"
        batch = mirrors._reader(mirrors.mirror_path("r"))._process
        assert batch is not None and batch.poll() is None
        assert mirrors.read_file("r", repo.clone_url, first, "bin.dat") == b"\x00\x01two lines\nand a half"
        assert mirrors.read_file("r", repo.clone_url, first, "absent.yml") is None
        assert mirrors.read_file("r", repo.clone_url, first, "") is None  # a tree, not a file
        # The same process answered every question.
        assert mirrors._reader(mirrors.mirror_path("r"))._process is batch

        # A commit pushed after the mirror was made: fetched, then read.
        second = repo.commit({".ledgerci.yml": "second\n"})
        assert mirrors.read_file("r", repo.clone_url, second, ".ledgerci.yml") == b"second\n"
        assert mirrors.read_file("r", repo.clone_url, first, ".ledgerci.yml") == b"first\n"
    finally:
        mirrors.close()


def test_a_killed_batch_process_is_replaced(tmp_path: Path):
    repo = GitRepo(tmp_path / "repo")
    commit = repo.commit({".ledgerci.yml": "jobs: []\n"})
    mirrors = GitMirrors(tmp_path / "mirrors")
    try:
        assert mirrors.read_file("r", repo.clone_url, commit, ".ledgerci.yml") == b"jobs: []\n"
        batch = mirrors._reader(mirrors.mirror_path("r"))._process
        assert batch is not None
        os.kill(batch.pid, signal.SIGKILL)
        batch.wait()
        assert mirrors.read_file("r", repo.clone_url, commit, ".ledgerci.yml") == b"jobs: []\n"
        assert mirrors._reader(mirrors.mirror_path("r"))._process is not batch
    finally:
        mirrors.close()
