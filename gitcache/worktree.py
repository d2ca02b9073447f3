"""Writing a small plain tree into a working tree without starting a git process.

A job's checkout was one `git reset --hard` per job: ≈3.4 ms of CPU in the git process and
≈0.4 ms to start it, for a tree of a few files, on every job. The mirror's long-lived
`git cat-file --batch` (gitcache.blobs) already answers for objects over a pipe, so for a
tree that git would write byte for byte as stored, dulwich writes the files and the index
from those objects: the same files, modes and symlinks, an index git reads as clean, and
dulwich's own path checks (no `.git`, no `..`, nothing written through a symlink the tree
made).

Git still checks out anything where it would do more than copy bytes, or do it faster:
- a `.gitattributes` anywhere (line endings, filters such as LFS, `export-ignore`...),
- submodules (`.gitmodules`, gitlinks),
- more than MAX_ENTRIES files (git's C code writes many files faster than Python).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dulwich.index import build_index_from_tree, iter_tree_contents
from dulwich.objects import ShaFile, Tree

from gitcache.blobs import BatchReader

# Past this many files git's own checkout is the cheaper one (it writes files in C, and in
# parallel when configured); a few hundred files cost Python a few ms.
MAX_ENTRIES = 256
# Files whose presence means git would do more than write each blob as stored.
_GIT_SPECIAL = {b".gitattributes", b".gitmodules"}
_TYPE_NUMBERS = {b"commit": 1, b"tree": 2, b"blob": 3, b"tag": 4}


class _BatchObjects:
    """dulwich's object container, answered by a mirror's `git cat-file --batch`. Trees are
    kept for the one checkout (the tree is walked twice: to decide, then to write)."""

    def __init__(self, reader: BatchReader) -> None:
        self.reader = reader
        self._trees: dict[bytes, ShaFile] = {}

    def __getitem__(self, sha: bytes) -> ShaFile:
        if (tree := self._trees.get(sha)) is not None:
            return tree
        kind, content = self.reader.object(sha.decode("ascii"))
        if kind is None or kind not in _TYPE_NUMBERS:
            raise KeyError(sha)
        found = ShaFile.from_raw_string(_TYPE_NUMBERS[kind], content, sha=sha)
        if isinstance(found, Tree):
            self._trees[sha] = found
        return found

    def __contains__(self, sha: bytes) -> bool:
        try:
            self[sha]
        except KeyError:
            return False
        return True


def write_plain_tree(reader: BatchReader, commit: str, dest: Path) -> bool:
    """Write `commit`'s tree into `dest` (an empty working tree whose `.git` is set up) and
    its index into `dest/.git/index`. False, with nothing written, when the commit is not in
    the mirror or its tree is one git should check out (the module's docstring says which)."""
    commit_object = reader.commit_object(commit)
    if commit_object is None:
        return False
    tree_id = _tree_of(commit_object)
    objects = _BatchObjects(reader)
    try:
        # Walked only until git's turn is certain: a big repository's whole tree is never read here.
        for count, entry in enumerate(iter_tree_contents(objects, tree_id), start=1):
            if count > MAX_ENTRIES or _needs_git(entry.path, entry.mode):
                return False
    except KeyError:
        return False
    build_index_from_tree(os.fsencode(dest), os.fsencode(dest / ".git" / "index"), objects, tree_id)
    return True


def _tree_of(commit_object: bytes) -> bytes:
    first_line = commit_object.split(b"\n", 1)[0]  # "tree <sha>", always first in a commit
    kind, _, sha = first_line.partition(b" ")
    if kind != b"tree":
        raise ValueError("a commit object that does not start with its tree")
    return sha


def _needs_git(path: bytes, mode: int) -> bool:
    return stat.S_IFMT(mode) == 0o160000 or path.rsplit(b"/", 1)[-1] in _GIT_SPECIAL
