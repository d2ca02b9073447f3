"""Repository mirrors against real git: files read at commits through one long-lived
`git cat-file --batch` per mirror, which must see commits fetched after it started and
survive its git process dying."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from gitcache import GitError, GitMirrors
from gitcache.worktree import MAX_ENTRIES, write_plain_tree
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


# ----- a job's checkout ---------------------------------------------------------------------------

def _git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=check)


def _tree_as_found(root: Path) -> dict[str, tuple[str, str]]:
    """Every file under `root` but `.git`: (kind and mode, content or link target)."""
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if name == ".git" or name.startswith(".git/"):
            continue
        if path.is_symlink():
            found[name] = ("link", os.readlink(path))
        elif path.is_file():
            found[name] = (oct(path.stat().st_mode & 0o777), path.read_bytes().decode(errors="replace"))
    return found


def _checked_out_by_git(repo: GitRepo, commit: str, dest: Path) -> Path:
    _git(dest.parent, "clone", "-q", "--no-checkout", repo.clone_url, dest.name)
    _git(dest, "checkout", "-q", "--detach", commit)
    return dest


def test_a_small_plain_tree_is_written_as_git_writes_it_and_git_reads_it_clean(tmp_path: Path):
    repo = GitRepo(tmp_path / "repo")
    repo.commit({".ledgerci.yml": "jobs: []\n", "src/app/main.py": "print('hi')\n", "empty": "",
                 "docs/ünïcode name.md": "# title\r\nwindows line\r\n", "run.sh": "#!/bin/sh\necho ok\n"})
    (repo.path / "run.sh").chmod(0o755)
    (repo.path / "latest").symlink_to("src/app/main.py")
    commit = repo.commit({}, "executable and symlink")
    mirrors = GitMirrors(tmp_path / "mirrors")
    try:
        mirrors.ensure_commit("r", repo.clone_url, commit)
        ours = tmp_path / "ours"
        mirrors._start_worktree(mirrors.mirror_path("r"), commit, ours)
        assert write_plain_tree(mirrors._reader(mirrors.mirror_path("r")), commit, ours)  # no git process

        mirrors.checkout("r", repo.clone_url, commit, tmp_path / "checkout")  # the same, as a job gets it
    finally:
        mirrors.close()
    reference = _checked_out_by_git(repo, commit, tmp_path / "reference")
    for tree in (ours, tmp_path / "checkout"):
        assert _tree_as_found(tree) == _tree_as_found(reference)
        assert _tree_as_found(tree)["run.sh"][0] == "0o755"
        assert _tree_as_found(tree)["latest"] == ("link", "src/app/main.py")
        # git reads the index as clean, porcelain and plumbing alike, and sees the commit.
        assert _git(tree, "status", "--porcelain").stdout == ""
        assert _git(tree, "diff-files", "--quiet", check=False).returncode == 0
        assert _git(tree, "diff-index", "--quiet", "HEAD", check=False).returncode == 0
        assert _git(tree, "ls-files", "-s").stdout == _git(reference, "ls-files", "-s").stdout
        assert _git(tree, "rev-parse", "HEAD").stdout.strip() == commit
        # A job may make branches and tags in its checkout (its `.git` starts with an empty refs/).
        _git(tree, "tag", "v1")
        _git(tree, "branch", "topic")
        assert _git(tree, "rev-parse", "v1", "topic").stdout.split() == [commit, commit]


def test_git_checks_out_what_it_would_change_on_the_way(tmp_path: Path):
    """Line endings from .gitattributes, submodules, and many files are git's to write."""
    repo = GitRepo(tmp_path / "repo")
    attributes = repo.commit({".gitattributes": "*.txt text eol=crlf\n", "notes.txt": "one\ntwo\n"})
    many = repo.commit({f"many/{n}.txt": f"{n}\n" for n in range(MAX_ENTRIES)})
    mirrors = GitMirrors(tmp_path / "mirrors")
    try:
        mirrors.ensure_commit("r", repo.clone_url, many)
        reader = mirrors._reader(mirrors.mirror_path("r"))
        for commit in (attributes, many):
            dest = tmp_path / commit
            mirrors._start_worktree(mirrors.mirror_path("r"), commit, dest)
            assert not write_plain_tree(reader, commit, dest)
            assert _tree_as_found(dest) == {}  # nothing written: git does all of it

        mirrors.checkout("r", repo.clone_url, attributes, tmp_path / "crlf")
        assert (tmp_path / "crlf" / "notes.txt").read_bytes() == b"one\r\ntwo\r\n"
        assert _git(tmp_path / "crlf", "status", "--porcelain").stdout == ""
        mirrors.checkout("r", repo.clone_url, many, tmp_path / "many")
        assert len(list((tmp_path / "many" / "many").iterdir())) == MAX_ENTRIES
        assert _git(tmp_path / "many", "status", "--porcelain").stdout == ""
    finally:
        mirrors.close()


def test_a_tree_that_writes_into_git_is_refused_and_writes_nothing_outside(tmp_path: Path):
    """A commit made by hand whose tree holds `.git/hooks/post-checkout`: neither dulwich nor
    git writes it, so the job fails its checkout instead of running with a planted hook."""
    repo = GitRepo(tmp_path / "repo")
    repo.commit({"README": "hi\n"})
    blob = subprocess.run(["git", "-C", str(repo.path), "hash-object", "-w", "--stdin"],
                          input="#!/bin/sh\ntouch /tmp/pwned\n", capture_output=True, text=True,
                          check=True).stdout.strip()
    hooks = _mktree(repo.path, f"100755 blob {blob}\tpost-checkout\n")
    dot_git = _mktree(repo.path, f"040000 tree {hooks}\thooks\n")
    readme = _git(repo.path, "rev-parse", "HEAD:README").stdout.strip()
    root = _mktree(repo.path, f"040000 tree {dot_git}\t.git\n100644 blob {readme}\tREADME\n")
    commit = _git(repo.path, "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit-tree", root, "-m",
                  "planted").stdout.strip()
    _git(repo.path, "update-ref", "refs/heads/planted", commit)
    mirrors = GitMirrors(tmp_path / "mirrors")
    try:
        with pytest.raises(GitError):
            mirrors.checkout("r", repo.clone_url, commit, tmp_path / "ws")
    finally:
        mirrors.close()
    assert not (tmp_path / "ws" / ".git" / "hooks").exists()


def _mktree(repo: Path, entries: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "mktree"], input=entries, capture_output=True, text=True,
                          check=True).stdout.strip()
