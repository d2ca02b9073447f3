"""Caches (issue 20), end to end on PostgreSQL, a real nats-server (its object store) and
runner processes: an entry saved by run 1 is restored by run 2 (hit), by prefix by run 3
(partial), by another branch from the default branch; another tenant never restores it, even
with the same key; a runner SIGKILLed while it saves records nothing for its attempt, and the
retry saves the entry once. Each restore and save is in the run's history."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_artifacts import fault_cluster, stored_chunks  # noqa: F401 - the fixture
from tests.e2e.test_faults import assert_invariants, wait_for
from tests.support.api import Api
from tests.support.cluster import ADMIN_TOKEN, LedgerCluster
from tests.support.git_repo import GitRepo

pytestmark = pytest.mark.e2e

CACHED = """\
jobs:
  - name: deps
    run: |
      if [ -f .venv/marker ]; then echo "restored $(cat .venv/marker)"; else echo "cold start"; fi
      mkdir -p .venv && cat requirements.txt > .venv/marker
    cache:
      key: deps-${{ hashFiles('requirements.txt') }}
      restore_keys: [deps-]
      paths: [.venv/]
"""


class Repository:
    def __init__(self, admin: Api, tmp_path: Path, name: str, workflow: str) -> None:
        tenant_id, token = admin.tenant(name)
        self.api = Api(admin.url, token)
        self.repo = GitRepo(tmp_path / name)
        self.workflow = workflow
        self.id = admin.repository(tenant_id, self.repo.clone_url, f"{name}-repo")

    def run(self, requirements: str, ref: str = "refs/heads/main", n: int = 0) -> dict:
        commit = self.repo.commit({".ledgerci.yml": self.workflow, "requirements.txt": requirements, "n": str(n)})
        run = self.api.wait_run(self.api.push(self.id, commit, ref=ref).json()["run_id"], timeout=120)
        assert run["status"] == "succeeded", self.api.explain(run["id"])
        return run

    def cache_events(self, run: dict) -> list[tuple]:
        return [(e["type"], e["data"].get("result"), e["data"].get("attempt"))
                for e in self.api.events(run["id"]) if e["type"] in ("CacheRestored", "CacheSaved")]


def test_an_entry_is_restored_by_key_by_prefix_and_from_the_default_branch_and_never_across_tenants(
        tmp_path: Path, cluster: LedgerCluster, admin: Api) -> None:
    alpha = Repository(admin, tmp_path, "alpha", CACHED)
    first = alpha.run("flask==3.0\n", n=1)
    assert "cold start" in alpha.api.log(first["jobs"][0]["id"])
    assert alpha.cache_events(first) == [("CacheRestored", "miss", 1), ("CacheSaved", None, 1)]

    second = alpha.run("flask==3.0\n", n=2)  # the same key: a hit, and nothing saved again
    log = alpha.api.log(second["jobs"][0]["id"])
    assert "restored flask==3.0" in log and ": hit" in log
    assert alpha.cache_events(second) == [("CacheRestored", "hit", 1)]

    third = alpha.run("flask==3.1\n", n=3)  # a new key: the newest "deps-" entry, then its own saved
    assert "restored flask==3.0" in alpha.api.log(third["jobs"][0]["id"])
    assert alpha.cache_events(third) == [("CacheRestored", "partial", 1), ("CacheSaved", None, 1)]
    restored = next(e["data"] for e in alpha.api.events(third["id"]) if e["type"] == "CacheRestored")
    assert restored["restored_key"].startswith("deps-") and restored["restored_key"] != restored["key"]

    branch = alpha.run("flask==3.1\n", ref="refs/heads/feature", n=4)  # main's entry, as a hit
    assert "restored flask==3.1" in alpha.api.log(branch["jobs"][0]["id"])
    assert alpha.cache_events(branch) == [("CacheRestored", "hit", 1)]

    # Another tenant, the same file, so the same key: its own miss, never alpha's entry.
    beta = Repository(admin, tmp_path, "beta", CACHED)
    other = beta.run("flask==3.0\n", n=1)
    assert "cold start" in beta.api.log(other["jobs"][0]["id"])
    assert beta.cache_events(other) == [("CacheRestored", "miss", 1), ("CacheSaved", None, 1)]
    assert_invariants(cluster)


BIG_CACHE = """\
jobs:
  - name: deps
    retries: 1
    run: mkdir -p .venv && head -c 150000000 /dev/zero > .venv/big.bin
    cache:
      key: big-${{ hashFiles('requirements.txt') }}
      paths: [.venv/]
"""


def test_a_runner_killed_while_it_saves_records_nothing_and_the_retry_saves_once(
        tmp_path: Path, fault_cluster: LedgerCluster) -> None:  # noqa: F811 - the fixture
    admin = Api(fault_cluster.url, ADMIN_TOKEN)
    delta = Repository(admin, tmp_path, "delta", BIG_CACHE)
    commit = delta.repo.commit({".ledgerci.yml": BIG_CACHE, "requirements.txt": "x\n"})
    run_id = delta.api.push(delta.id, commit, ref="refs/heads/main").json()["run_id"]
    monitor = fault_cluster.nats_monitor  # type: ignore[attr-defined]
    wait_for(lambda: stored_chunks(monitor, "OBJ_LEDGERCI_CACHES") > 0, 60, "the save to begin")
    holder = delta.api.run(run_id)["jobs"][0]
    assert holder["status"] == "running" and holder["attempt"] == 1, holder
    fault_cluster.kill(fault_cluster.runner_service(holder["runner_id"]))

    run = delta.api.wait_run(run_id, timeout=120)
    assert run["status"] == "succeeded" and run["jobs"][0]["attempt"] == 2, delta.api.explain(run_id)
    # Attempt 1's entry never got its name (the object store writes it last): a miss, then one save.
    assert delta.cache_events(run) == [("CacheRestored", "miss", 2), ("CacheSaved", None, 2)]
    saved = next(e["data"] for e in delta.api.events(run_id) if e["type"] == "CacheSaved")
    assert saved["size"] > 150_000_000
    assert_invariants(fault_cluster)
