"""Artifacts' `when` and caches' `policy` and quota (issue 20), decided by the runner: in the
test's own process (tests/support/in_process.py: SQLite, the embedded nats-server and its
object stores, jobs played by the scripted executor), each test ending with the invariant
checker over the whole history. What happened is read where it is kept: the run's events
(ArtifactUploaded, CacheRestored, CacheSaved), the job's log and the object stores themselves.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from domain.artifacts import BUCKET as ARTIFACTS
from domain.caches import BUCKET as CACHES
from domain.caches import key_of, tenant_prefix
from tests.support.git_repo import GitRepo
from tests.support.in_process import InProcess, in_process_ledger
from tests.support.invariants import check_invariants

# The runner's default quota of a tenant's cache entries: two of this file's entries fit (a
# tar of one small file is one 10 240-byte record), a third does not.
CACHE_QUOTA = 25_000


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[InProcess]:
    with in_process_ledger(tmp_path / "ledgerci", runner_slots=4, stop_grace_seconds=1.0,
                           cache_tenant_max_bytes=CACHE_QUOTA) as ledger:
        yield ledger
        assert check_invariants(ledger.database_url) == []


def stored(ledger: InProcess, bucket: str) -> dict[str, int]:
    """The objects in one of the embedded nats-server's object stores: name -> size."""
    async def listing() -> dict[str, int]:
        nc = await nats.connect(ledger.nats_url)
        try:
            store = await nc.jetstream().object_store(bucket)
            try:
                entries = await store.list(ignore_deletes=True)
            except Exception as failed:
                if type(failed).__name__ == "NotFoundError":  # nothing stored yet
                    return {}
                raise
            return {entry.name: entry.size for entry in entries if not entry.deleted}
        finally:
            await nc.close()

    return asyncio.run(listing())


class Repository:
    """A repository of a tenant of its own, each push a new commit of the workflow given."""

    def __init__(self, ledger: InProcess, tmp_path: Path, max_cache_bytes: int | None = None) -> None:
        self.ledger, self.api = ledger, ledger.api
        self.tenant_id, _ = self.api.tenant()
        if max_cache_bytes is not None:
            limited = self.api.http.patch(f"/api/v1/tenants/{self.tenant_id}",
                                          json={"max_cache_bytes": max_cache_bytes})
            assert limited.status_code == 200 and limited.json()["max_cache_bytes"] == max_cache_bytes, limited.text
        self.repo = GitRepo(tmp_path / f"repo-{self.tenant_id}")
        self.id = self.api.repository(self.tenant_id, self.repo.clone_url)

    def push(self, workflow: str) -> str:
        commit = self.repo.commit({".ledgerci.yml": workflow, "n": secrets.token_hex(4)})
        return self.api.push(self.id, commit).json()["run_id"]

    def run(self, workflow: str) -> dict:
        run = self.api.wait_run(self.push(workflow), timeout=30)
        assert run["status"] == "succeeded", self.api.explain(run["id"])
        return run

    def log(self, run: dict) -> str:
        return self.api.log(run["jobs"][0]["id"])

    def cache_events(self, run: dict) -> list[tuple]:
        """(type, key, what the restore found) of each cache event of the run, in order."""
        return [(e["type"], e["data"]["key"], e["data"].get("result")) for e in self.api.events(run["id"])
                if e["type"] in ("CacheRestored", "CacheSaved")]

    def cache_entries(self) -> set[str]:
        """The keys of the tenant's entries in the caches' object store."""
        return {key_of(name) for name in stored(self.ledger, CACHES) if name.startswith(tenant_prefix(self.tenant_id))}


def cached(key: str, policy: str = "pull-push", restore_keys: str = "[]") -> str:
    """A job that shows what its cache path holds, then writes it: "made for KEY"."""
    return ("jobs:\n  - name: deps\n    run: |\n      show .venv/marker\n      write .venv/marker made for "
            f"{key}\n    cache:\n      key: {key}\n      restore_keys: {restore_keys}\n      paths: [.venv/]\n"
            f"      policy: {policy}\n")


def test_a_tenants_cache_entries_beyond_its_quota_go_least_recently_used_first(tmp_path: Path, ledger: InProcess):
    """The runner's default quota holds two entries of alpha's: a third saved removes the one
    least recently restored or saved, never the new one, and never another tenant's; beta's own,
    larger quota keeps all three of its entries."""
    beta = Repository(ledger, tmp_path, max_cache_bytes=10 * CACHE_QUOTA)
    for key in ("a", "b", "c"):  # the same keys as alpha's: its own entries
        assert beta.cache_events(beta.run(cached(key))) == [("CacheRestored", key, "miss"), ("CacheSaved", key, None)]
    assert beta.cache_entries() == {"a", "b", "c"}

    alpha = Repository(ledger, tmp_path)
    first = alpha.run(cached("a"))
    assert alpha.cache_events(first) == [("CacheRestored", "a", "miss"), ("CacheSaved", "a", None)]
    [size] = [e["data"]["size"] for e in alpha.api.events(first["id"]) if e["type"] == "CacheSaved"]
    assert 2 * size <= CACHE_QUOTA < 3 * size, size  # what the test relies on
    alpha.run(cached("b"))
    assert alpha.cache_entries() == {"a", "b"}

    restored = alpha.run(cached("a"))  # a restore is a use: "a" is now more recent than "b"
    assert alpha.cache_events(restored) == [("CacheRestored", "a", "hit")]
    assert "made for a" in alpha.log(restored)

    third = alpha.run(cached("c"))
    assert alpha.cache_events(third) == [("CacheRestored", "c", "miss"), ("CacheSaved", "c", None)]
    assert alpha.cache_entries() == {"a", "c"}  # "b" went: saved before "a" was last restored
    assert sum(bytes_ for name, bytes_ in stored(ledger, CACHES).items()
               if name.startswith(tenant_prefix(alpha.tenant_id))) <= CACHE_QUOTA

    again = alpha.run(cached("b"))  # gone, so a miss; saved anew, and now "a" is the oldest use
    assert alpha.cache_events(again) == [("CacheRestored", "b", "miss"), ("CacheSaved", "b", None)]
    assert ".venv/marker: absent" in alpha.log(again)
    assert alpha.cache_entries() == {"c", "b"}
    assert beta.cache_entries() == {"a", "b", "c"}  # alpha's quota never removed beta's entries


def test_a_pull_cache_restores_but_never_saves_and_a_push_one_saves_but_never_restores(
        tmp_path: Path, ledger: InProcess):
    repo = Repository(ledger, tmp_path)
    pulled = repo.run(cached("deps-1", policy="pull"))
    assert repo.cache_events(pulled) == [("CacheRestored", "deps-1", "miss")]
    assert repo.cache_entries() == set()  # a miss, and still nothing saved

    pushed = repo.run(cached("deps-1", policy="push"))
    assert repo.cache_events(pushed) == [("CacheSaved", "deps-1", None)]
    assert repo.cache_entries() == {"deps-1"}

    # The entry of its very key is there: a push job does not restore it (nor save it again).
    pushed_again = repo.run(cached("deps-1", policy="push"))
    assert repo.cache_events(pushed_again) == []
    assert ".venv/marker: absent" in repo.log(pushed_again)
    assert "kept as it was" in repo.log(pushed_again)

    # A pull job restores by prefix, and leaves its own key unsaved.
    partial = repo.run(cached("deps-2", policy="pull", restore_keys="[deps-]"))
    assert repo.cache_events(partial) == [("CacheRestored", "deps-2", "partial")]
    assert "made for deps-1" in repo.log(partial)
    assert repo.cache_entries() == {"deps-1"}

    # A push job of a key that a restore key would have found: not restored, its own saved.
    saved = repo.run(cached("deps-2", policy="push", restore_keys="[deps-]"))
    assert repo.cache_events(saved) == [("CacheSaved", "deps-2", None)]
    assert ".venv/marker: absent" in repo.log(saved)
    assert repo.cache_entries() == {"deps-1", "deps-2"}

    hit = repo.run(cached("deps-2", policy="pull"))  # and what the push job saved is what it wrote
    assert repo.cache_events(hit) == [("CacheRestored", "deps-2", "hit")]
    assert "made for deps-2" in repo.log(hit)


# (when, the job's exit code, whether its artifact is stored)
WHEN_CASES = [("on_success", 0, True), ("on_success", 3, False), ("on_failure", 0, False),
              ("on_failure", 3, True), ("always", 0, True), ("always", 3, True)]


def test_artifacts_are_stored_as_their_when_asks_for_a_failed_or_succeeded_job(tmp_path: Path, ledger: InProcess):
    repo = Repository(ledger, tmp_path)
    run_ids = [repo.push(f"jobs:\n  - name: build\n    run: |\n      write out.txt {when} exit {code}\n"
                         f"      exit {code}\n    artifacts:\n      paths: [out.txt]\n      when: {when}\n")
               for when, code, _ in WHEN_CASES]
    objects = set()
    for run_id, (when, code, kept) in zip(run_ids, WHEN_CASES, strict=True):
        run = repo.api.wait_run(run_id, timeout=30)
        [job] = run["jobs"]
        case = f"when {when}, exit {code}: {repo.api.explain(run_id)}"
        # The artifact never changes the outcome: a failed job stays failed, with its exit code.
        assert (job["status"], job["exit_code"], job["error"]) == (
            ("succeeded", 0, None) if code == 0 else ("failed", code, f"exit code {code}")), case
        uploaded = [e["data"] for e in repo.api.events(run_id) if e["type"] == "ArtifactUploaded"]
        listed = repo.api.http.get(f"/api/v1/runs/{run_id}/artifacts").json()["artifacts"]
        download = repo.api.http.get(f"/api/v1/runs/{run_id}/artifacts/build/out.txt")
        if kept:
            assert [(u["path"], u["attempt"]) for u in uploaded] == [("out.txt", 1)], case
            assert [a["name"] for a in listed] == ["build/out.txt"], case
            assert download.status_code == 200 and download.text == f"{when} exit {code}", case
            objects.add(uploaded[0]["object"])
        else:
            assert (uploaded, listed, download.status_code) == ([], [], 404), case
    # The object store holds exactly the files recorded: nothing of the jobs that did not upload.
    assert set(stored(ledger, ARTIFACTS)) == objects and len(objects) == 4
