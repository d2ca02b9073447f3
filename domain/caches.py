"""Caches: files a job keeps between runs (dependencies, build outputs), by key.

    cache:
      key: deps-${{ hashFiles('requirements.txt') }}
      restore_keys: [deps-]
      paths: [.venv/]
      policy: pull-push

Before the job's command the runner restores the entry of `key` (a hit), else the newest entry
whose key starts with one of `restore_keys`, tried in order (partial), else nothing (a miss):
first among the entries of the push's branch, then among those of the default branch (`main`).
After a successful command it saves `paths` under `key`, unless an entry of that key is there:
entries never change once written (as GitHub's caches). A tenant's entries beyond its quota
go, least recently used first. The restore and the save are recorded with the attempt's
outcome (`CacheRestored`, `CacheSaved`).

An entry's name is made from (tenant, repository, branch, key), each part escaped, by the
runner from the job's dispatch, never from the job: a tenant can never restore another's entry,
even one of the same key, and one branch's key cannot pass for another branch's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal, cast, get_args
from urllib.parse import quote, unquote

import msgspec

from domain.artifacts import path_problem
from domain.workflow_file import RawCache, field_error
from domain.yaml_lines import Located, Path

BUCKET = "LEDGERCI_CACHES"
DEFAULT_BRANCH = "main"  # whose entries every branch may restore
MAX_KEY_CHARS = 512
MAX_RESTORE_KEYS = 10
MAX_PATHS = 20

CachePolicy = Literal["pull-push", "pull", "push"]
POLICIES: tuple[CachePolicy, ...] = get_args(CachePolicy)
Restored = Literal["hit", "partial", "miss"]

_EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}")
_HASH_FILES = re.compile(r"\s*hashFiles\(\s*('[^']+'(?:\s*,\s*'[^']+')*)\s*\)\s*")
_QUOTED = re.compile(r"'([^']+)'")
KEY_VARIABLES = ("branch", "commit", "repository", "job")


class CacheSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    key: str  # as written: expressions unexpanded
    restore_keys: list[str] = []
    paths: list[str]
    policy: CachePolicy = "pull-push"
    # The tenant's byte quota when the run was planned (None: the runner's default).
    quota_bytes: int | None = None

    @property
    def pulls(self) -> bool:
        return self.policy in ("pull-push", "pull")

    @property
    def pushes(self) -> bool:
        return self.policy in ("pull-push", "push")


class CacheReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a runner did with an attempt's cache, reported with its outcome."""

    key: str  # expanded
    restored: Restored | None = None  # None: the policy does not pull
    restored_key: str | None = None  # the entry restored (a partial one's key differs)
    saved_size: int | None = None  # None: nothing saved (the policy, a hit, the entry exists, a failure)
    saved_sha256: str | None = None


_SHA256 = re.compile(r"[0-9a-f]{64}")


def report_problem(spec: CacheSpec | None, report: CacheReport) -> str | None:
    """Why a runner's cache report cannot be recorded (None: it can)."""
    if spec is None:
        return "the job has no cache"
    if not report.key or len(report.key) > 4 * MAX_KEY_CHARS:
        return "no key, or one too long"
    if report.saved_size is not None and (report.saved_size < 0 or not _SHA256.fullmatch(report.saved_sha256 or "")):
        return "a saved entry without its size or SHA-256"
    return None


def key_problem(template: str) -> str | None:
    """Why a key (or a restore key) cannot be used, if it cannot."""
    if not template.strip() or len(template) > MAX_KEY_CHARS:
        return f"a key of 1 to {MAX_KEY_CHARS} characters"
    for expression in _EXPRESSION.findall(template):
        if expression.strip() in KEY_VARIABLES:
            continue
        called = _HASH_FILES.fullmatch(expression)
        if called is None:
            return (f'"${{{{{expression}}}}}" is not one of ${{{{ hashFiles(\'glob\', ...) }}}}, '
                    + ", ".join(f"${{{{ {name} }}}}" for name in KEY_VARIABLES))
        for pattern in _QUOTED.findall(called[1]):
            if problem := path_problem(pattern):
                return f"hashFiles('{pattern}'): expected {problem}"
    if "${{" in _EXPRESSION.sub("", template):
        return 'a "${{" that is not an expression like ${{ hashFiles(\'requirements.txt\') }}'
    return None


def expand_key(template: str, *, hash_files: Callable[[list[str]], str], branch: str, commit: str,
               repository: str, job: str) -> str:
    """The key for one attempt: `hash_files(globs)` is the SHA-256 of the files they match."""
    values = {"branch": branch, "commit": commit, "repository": repository, "job": job}

    def value(match: re.Match[str]) -> str:
        expression = match[1].strip()
        if expression in values:
            return values[expression]
        called = _HASH_FILES.fullmatch(match[1])
        assert called is not None  # key_problem passed it
        return hash_files(_QUOTED.findall(called[1]))

    return _EXPRESSION.sub(value, template)


def tenant_prefix(tenant_id: str) -> str:
    """The prefix of every entry name of a tenant."""
    return quote(tenant_id, safe="") + "/"


def repository_prefix(tenant_id: str, repository_id: str) -> str:
    return tenant_prefix(tenant_id) + quote(repository_id, safe="") + "/"


def scope(tenant_id: str, repository_id: str, branch: str) -> str:
    """The prefix of every entry name of one branch of a repository of a tenant."""
    return repository_prefix(tenant_id, repository_id) + quote(branch, safe="") + "/"


def entry_name(tenant_id: str, repository_id: str, branch: str, key: str) -> str:
    return scope(tenant_id, repository_id, branch) + quote(key, safe="")


def key_of(name: str) -> str:
    """The key an entry name holds (its last part, unescaped)."""
    return unquote(name.rsplit("/", 1)[-1])


def compiled_cache(raw: RawCache | None, path: Path, at: Located) -> CacheSpec | None:
    if raw is None:
        return None
    if problem := key_problem(raw.key):
        raise field_error(f"expected {problem}" if problem.startswith("a key") else problem, (*path, "key"), at)
    if len(raw.restore_keys) > MAX_RESTORE_KEYS:
        raise field_error(f"at most {MAX_RESTORE_KEYS} restore keys, got {len(raw.restore_keys)}",
                          (*path, "restore_keys"), at)
    for i, prefix in enumerate(raw.restore_keys):
        if problem := key_problem(prefix):
            raise field_error(problem, (*path, "restore_keys", i), at)
    if not 1 <= len(raw.paths) <= MAX_PATHS:
        raise field_error(f"expected 1 to {MAX_PATHS} paths, got {len(raw.paths)}", (*path, "paths"), at)
    for i, pattern in enumerate(raw.paths):
        if problem := path_problem(pattern):
            raise field_error(f'"{pattern[:100]}": expected {problem}', (*path, "paths", i), at)
    if raw.policy not in POLICIES:
        raise field_error(f'expected one of: {", ".join(POLICIES)}, got "{raw.policy}"', (*path, "policy"), at)
    return CacheSpec(key=raw.key, restore_keys=raw.restore_keys, paths=raw.paths,
                     policy=cast(CachePolicy, raw.policy))
