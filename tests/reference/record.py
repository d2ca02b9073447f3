"""Record reference histories: real event streams, as stored, with the state at each version.

    python -m tests.reference.record v2     # writes tests/reference/histories/v2/*.json

Each scenario drives the real write side (LedgerApp over a scratch SQLite store, with a fixed
clock) through a story a run can have, then dumps every stored event of each aggregate it made
(topic, version and state, byte for byte) and the aggregate's state at every version. The
files are checked in and never rewritten: when an event's shape changes, record a new version
directory beside the old ones, and `test_reference_histories` keeps replaying all of them.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

from commands.app import LedgerApp
from commands.principal import Principal
from commands.schema import create_event_store
from commands.secrets import SecretBook
from commands.store import eventsourcing_env
from commands.subscriptions import Subscriptions
from domain.artifacts import UploadedArtifact
from domain.caches import CacheReport
from domain.ids import concurrency_group_id, token_aggregate_id
from domain.messages import FinishJob, HandBack, Heartbeat, StartJob
from domain.secrets import Scope
from domain.statuses import StatusKind
from sealing import Keyring
from tests.reference.state import aggregate_state

HISTORIES = Path(__file__).parent / "histories"
ADMIN = Principal("admin", None)
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

THREE_JOBS = b"""name: build
jobs:
  - name: lint
    run: ruff check .
  - name: test
    run: pytest
    retries: 1
    timeout: 10m
  - name: deploy
    run: ./deploy.sh
    when: on_success
"""

FAILING = b"""jobs:
  - name: flaky
    run: exit 3
    allow_failure: true
  - name: test
    run: exit 1
  - name: package
    run: make dist
  - name: report
    run: ./report.sh
    when: always
"""

ONE_JOB = b"""jobs:
  - name: only
    run: make
    retries: 1
    timeout: 30s
"""

WITH_SECRETS = b"""jobs:
  - name: deploy
    run: ./deploy.sh
    secrets: [DEPLOY_TOKEN, REGISTRY_PASSWORD]
"""
# The deploy job finishes once started; a newer run of the group cancels the rest.
DEPLOY = b"""concurrency:
  group: deploy-${{ branch }}
  cancel_in_progress: true
jobs:
  - name: deploy
    run: ./deploy.sh
    interruptible: false
  - name: smoke
    run: ./smoke.sh
"""
NIGHTLY = b"""on:
  schedule:
    - cron: "0 3 * * *"
jobs:
  - name: nightly
    run: make nightly
"""
# Only the deploy job holds its group; build and smoke of two runs run side by side.
JOB_GROUP = b"""jobs:
  - name: build
    run: make
  - name: deploy
    run: ./deploy.sh
    concurrency: production
  - name: smoke
    run: ./smoke.sh
"""
# A fixed key, so that the recorded ciphertexts stay readable to whoever studies them.
KEYRING = Keyring([bytes(range(32))])


# Where each runner of the stories runs: (executor, pool), recorded in JobStarted since v2.
RUNNERS = {"runner-1": ("local", "default"), "runner-2": ("local", "fast")}


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        self.now += timedelta(seconds=seconds)


class Story:
    """One scenario's app, clock and the aggregates it touched."""

    def __init__(self, app: LedgerApp, clock: Clock) -> None:
        self.app = app
        self.clock = clock
        self.aggregates: list[UUID] = []
        self.commits = 0

    def push(self, workflow: bytes | None, ref: str = "refs/heads/main") -> UUID:
        self.commits += 1
        self.clock.tick()
        run_id = self.app.runs.push("web", f"{self.commits:040x}", ref, ADMIN).run_id
        self.aggregates.append(run_id)
        self.clock.tick()
        self.app.runs.plan_run(run_id, workflow, commit=(f"Change {self.commits}", "Ada Lovelace <ada@example.com>"))
        return run_id

    def job(self, run_id: UUID, index: int) -> tuple[str, int]:
        job = self.app.runs.get_run(run_id, ADMIN).jobs[index]
        return str(job.id), job.attempt

    def start(self, run_id: UUID, index: int, runner: str = "runner-1") -> None:
        job_id, attempt = self.job(run_id, index)
        self.clock.tick()
        executor, pool = RUNNERS[runner]
        self.app.runs.start_job(StartJob(run_id=str(run_id), job_id=job_id, attempt=attempt, runner_id=runner,
                                    executor=executor, pool=pool))

    def beat(self, run_id: UUID, index: int, runner: str = "runner-1") -> None:
        job_id, attempt = self.job(run_id, index)
        self.clock.tick(5)
        self.app.runs.heartbeat(Heartbeat(run_id=str(run_id), job_id=job_id, attempt=attempt, runner_id=runner))

    def finish(self, run_id: UUID, index: int, exit_code: int | None, runner: str = "runner-1", **kw) -> None:
        job_id, attempt = self.job(run_id, index)
        self.clock.tick()
        self.app.runs.finish_job(FinishJob(run_id=str(run_id), job_id=job_id, attempt=attempt, runner_id=runner,
                                      exit_code=exit_code, **kw))

    def run_job(self, run_id: UUID, index: int, exit_code: int = 0, runner: str = "runner-1") -> None:
        self.start(run_id, index, runner)
        self.beat(run_id, index, runner)
        self.finish(run_id, index, exit_code, runner)


def succeeds(story: Story) -> None:
    run_id = story.push(THREE_JOBS)
    for index in range(3):
        story.run_job(run_id, index)


def fails_and_runs_always(story: Story) -> None:
    run_id = story.push(FAILING)
    story.run_job(run_id, 0, exit_code=3)
    story.run_job(run_id, 1, exit_code=1)
    story.run_job(run_id, 3)


def runner_lost_then_retried(story: Story) -> None:
    run_id = story.push(THREE_JOBS)
    story.run_job(run_id, 0)
    story.start(run_id, 1, runner="runner-1")
    job_id, attempt = story.job(run_id, 1)
    story.clock.tick(120)  # past the 30 s lease, nothing heard
    story.app.runs.mark_lost(run_id, job_id, attempt)
    story.run_job(run_id, 1, runner="runner-2")
    story.start(run_id, 2, runner="runner-2")
    job_id, attempt = story.job(run_id, 2)
    story.clock.tick(120)
    story.app.runs.mark_lost(run_id, job_id, attempt)  # no retries left: fails "runner lost"


def timed_out(story: Story) -> None:
    run_id = story.push(ONE_JOB)
    story.start(run_id, 0)
    story.clock.tick(40)
    story.finish(run_id, 0, None, error="timed out", timed_out=True)  # the runner killed it
    story.start(run_id, 0, runner="runner-2")
    job_id, attempt = story.job(run_id, 0)
    for _ in range(6):  # heartbeats keep the lease, the timeout still falls
        story.beat(run_id, 0, runner="runner-2")
    story.app.runs.enforce_timeout(run_id, job_id, attempt)


def handed_back(story: Story) -> None:
    """A runner told to stop gives the attempt back; the retry it did not use is still there."""
    run_id = story.push(ONE_JOB)
    story.start(run_id, 0)
    job_id, attempt = story.job(run_id, 0)
    story.clock.tick(10)
    story.app.runs.hand_back(HandBack(run_id=str(run_id), job_id=job_id, attempt=attempt, runner_id="runner-1"))
    story.start(run_id, 0, runner="runner-2")
    job_id, attempt = story.job(run_id, 0)
    story.clock.tick(120)
    story.app.runs.mark_lost(run_id, job_id, attempt)  # uses the one retry
    story.run_job(run_id, 0, runner="runner-2")


def not_picked_up(story: Story) -> None:
    run_id = story.push(ONE_JOB)
    job_id, attempt = story.job(run_id, 0)
    story.clock.tick(3601)
    story.app.runs.expire_queued(run_id, job_id, attempt)


def cancelled_while_running(story: Story) -> None:
    run_id = story.push(THREE_JOBS)
    story.run_job(run_id, 0)
    story.start(run_id, 1)
    story.clock.tick()
    story.app.runs.cancel_run(run_id, Principal("acme", "acme"))


def rerun(story: Story) -> None:
    run_id = story.push(ONE_JOB)
    story.run_job(run_id, 0, exit_code=2)
    story.clock.tick()
    second = story.app.runs.rerun(run_id, ADMIN)
    story.aggregates.append(second)
    story.clock.tick()
    story.app.runs.plan_run(second, ONE_JOB)
    story.run_job(second, 0)


def skipped_and_invalid(story: Story) -> None:
    story.push(None)
    story.push(ONE_JOB, ref="refs/tags/v1")  # on no branch filter: runs; the filter below skips
    story.push(b"on:\n  branches: [main]\njobs:\n  - name: a\n    run: x\n", ref="refs/heads/dev")
    story.push(b"jobs:\n  - name: a\n    runs: x\n")


def secrets_of_tenant_and_repository(story: Story) -> None:
    """Secrets set, set again (a new value), deleted, on both owners; a job that lists two."""
    book = SecretBook(story.app, KEYRING)
    book.set(Scope.TENANT, "acme", "REGISTRY_PASSWORD", "tenant-wide-password", ADMIN)
    book.set(Scope.TENANT, "acme", "DEPLOY_TOKEN", "overridden-by-the-repository", ADMIN)
    book.set(Scope.TENANT, "acme", "RETIRED", "retired-tenant-value", ADMIN)
    story.clock.tick()
    book.delete(Scope.TENANT, "acme", "RETIRED", ADMIN)
    book.set(Scope.REPOSITORY, "web", "DEPLOY_TOKEN", "first-deploy-token", ADMIN)
    story.clock.tick()
    book.set(Scope.REPOSITORY, "web", "DEPLOY_TOKEN", "rotated-deploy-token", Principal("tenant:acme", "acme"))
    book.set(Scope.REPOSITORY, "web", "OLD", "old-repository-value", ADMIN)
    book.delete(Scope.REPOSITORY, "web", "OLD", ADMIN)
    run_id = story.push(WITH_SECRETS)
    story.run_job(run_id, 0)


def repository_deleted(story: Story) -> None:
    """A repository with a secret and a finished run is deleted: no more pushes, the run stays."""
    book = SecretBook(story.app, KEYRING)
    book.set(Scope.REPOSITORY, "web", "DEPLOY_TOKEN", "deploy-token", ADMIN)
    run_id = story.push(ONE_JOB)
    story.run_job(run_id, 0)
    story.clock.tick()
    story.app.registry.delete_repository("web", ADMIN)


def concurrency_group(story: Story) -> None:
    """Three pushes into one group: the first is superseded while its non-interruptible job
    runs, the second waits and is dropped for the third, which takes the group once the first
    job has finished and runs to the end."""
    first = story.push(DEPLOY)
    story.start(first, 0)
    story.push(DEPLOY)  # supersedes the first, waits for its deploy job to finish
    third = story.push(DEPLOY)  # drops the second
    story.aggregates.append(concurrency_group_id("acme", "deploy-main"))
    story.beat(first, 0)
    story.finish(first, 0, 0)  # the first ends cancelled; the third takes the group
    story.run_job(third, 0)
    story.run_job(third, 1)


def job_concurrency_group(story: Story) -> None:
    """Two runs whose deploy job shares a job-level group: the second's deploy waits for the
    first's to end, then takes the group in the save that ends it."""
    first, second = story.push(JOB_GROUP), story.push(JOB_GROUP)
    story.aggregates.append(concurrency_group_id("acme", "production"))
    for run_id in (first, second):
        story.run_job(run_id, 0)  # build; then the first takes the group, the second waits
    story.run_job(first, 1)  # deploy ends: the group goes to the second run
    story.run_job(first, 2)
    story.run_job(second, 1)
    story.run_job(second, 2)


def scheduled(story: Story) -> None:
    """A push to main declares a nightly schedule; its 03:00 firing runs that commit."""
    declaring = story.push(NIGHTLY)
    story.run_job(declaring, 0)
    commit = story.app.runs.get_run(declaring, ADMIN).commit
    story.clock.tick(3600)
    fired = story.app.runs.fire_schedule("web", "main", "0 3 * * *", START.replace(hour=3) + timedelta(days=1),
                                         commit).run_id
    story.aggregates.append(fired)
    story.clock.tick()
    story.app.runs.plan_run(fired, NIGHTLY)
    story.run_job(fired, 0)


def webhook(story: Story) -> None:
    """A repository's webhook secret set, rotated and removed, and its status target set and
    removed (encrypted with the fixed key)."""
    book = SecretBook(story.app, KEYRING)
    book.set_webhook("web", "the-first-webhook-secret", "org/web", ADMIN)
    story.clock.tick()
    book.set_webhook("web", "the-rotated-webhook-secret", None, Principal("tenant:acme", "acme"))
    story.clock.tick()
    book.remove_webhook("web", ADMIN)
    book.set_status_target("web", StatusKind.GITHUB, "https://api.github.com", "org/web", "ghp-status-token", ADMIN)
    story.clock.tick()
    book.remove_status_target("web", ADMIN)


def outgoing_webhook(story: Story) -> None:
    """A tenant's outgoing-webhook subscription made (its secret encrypted with the fixed key),
    a run it hears of, then deleted."""
    subscriptions = Subscriptions(story.app, SecretBook(story.app, KEYRING))
    subscription, _ = subscriptions.subscribe("acme", "https://hooks.example.com/ci", ["*.failed"], "web", "main",
                                              Principal("tenant:acme", "acme"))
    story.aggregates.append(subscription.id)
    story.clock.tick()
    failing = story.push(b"jobs:\n  - name: test\n    run: exit 1\n")
    story.run_job(failing, 0, exit_code=1)
    story.clock.tick()
    subscriptions.delete("acme", subscription.id, ADMIN)


def artifacts(story: Story) -> None:
    """A job's files recorded with its outcome; a retried attempt's replace the first's."""
    run_id = story.push(b"jobs:\n  - name: build\n    run: make\n    retries: 1\n"
                        b"    artifacts:\n      paths: [dist/]\n      when: always\n"
                        b"  - name: test\n    run: ls dist\n")
    story.start(run_id, 0)
    story.clock.tick(31)  # past the lease
    story.app.runs.mark_lost(run_id, story.job(run_id, 0)[0], 1)  # nothing it stored is recorded
    story.start(run_id, 0, "runner-2")
    story.finish(run_id, 0, 0, "runner-2", artifacts=[
        UploadedArtifact(path="dist/app.bin", size=1024, sha256="ab" * 32),
        UploadedArtifact(path="dist/notes.txt", size=5, sha256="cd" * 32)])
    story.run_job(run_id, 1)
    story.clock.tick(8 * 24 * 3600)  # past the default expire_in of 7 days
    story.app.runs.expire_artifacts(run_id, story.job(run_id, 0)[0], ["dist/app.bin"])


def cache(story: Story) -> None:
    """A job's cache restored by prefix and saved, recorded with its outcome."""
    run_id = story.push(b"jobs:\n  - name: deps\n    run: make deps\n    cache:\n"
                        b"      key: deps-${{ hashFiles('req.txt') }}\n      restore_keys: [deps-]\n"
                        b"      paths: [.venv/]\n")
    story.start(run_id, 0)
    story.finish(run_id, 0, 0, cache=CacheReport(key="deps-9f86d0", restored="partial", restored_key="deps-1a2b3c",
                                                saved_size=4096, saved_sha256="ef" * 32))


SCENARIOS: dict[str, Callable[[Story], None]] = {
    "succeeds": succeeds,
    "fails_and_runs_always": fails_and_runs_always,
    "runner_lost_then_retried": runner_lost_then_retried,
    "timed_out": timed_out,
    "not_picked_up": not_picked_up,
    "handed_back": handed_back,
    "cancelled_while_running": cancelled_while_running,
    "rerun": rerun,
    "skipped_and_invalid": skipped_and_invalid,
    "secrets_of_tenant_and_repository": secrets_of_tenant_and_repository,
    "repository_deleted": repository_deleted,
    "concurrency_group": concurrency_group,
    "job_concurrency_group": job_concurrency_group,
    "scheduled": scheduled,
    "webhook": webhook,
    "outgoing_webhook": outgoing_webhook,
    "artifacts": artifacts,
    "cache": cache,
}


@contextmanager
def scratch_app(clock: Callable[[], datetime]) -> Iterator[LedgerApp]:
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{scratch}/events.db"
        app = LedgerApp(env=eventsourcing_env(url), clock=clock)
        create_event_store(app, url)
        try:
            yield app
        finally:
            app.close()


def record(name: str, scenario: Callable[[Story], None]) -> dict:
    clock = Clock()
    with scratch_app(clock) as app:
        story = Story(app, clock)
        app.registry.create_tenant("acme", name="Acme", weight=1, max_concurrent_jobs=4, max_queued_runs=100,
                          pushes_per_minute=60, actor="admin")
        app.registry.update_tenant("acme", {"weight": 2, "max_concurrent_jobs": 8}, actor="admin")
        revoked = app.registry.issue_token("acme", actor="admin")
        app.registry.revoke_token("acme", token_aggregate_id(revoked), actor="admin")
        token = app.registry.issue_token("acme", actor="admin")
        story.aggregates += [app.registry.get_tenant("acme").id, token_aggregate_id(revoked), token_aggregate_id(token),
                             app.registry.register_repository("web", tenant_id="acme", clone_url="file:///srv/web.git",
                                                     principal=ADMIN).id]
        scenario(story)
        streams = []
        for aggregate_id in story.aggregates:
            stored = app.store.recorder.select_events(aggregate_id)
            streams.append({
                "aggregate_id": str(aggregate_id),
                "events": [{"version": e.originator_version, "topic": e.topic, "state": e.state.decode()}
                           for e in stored],
                "states": {str(e.originator_version): aggregate_state(app.store.repository.get(aggregate_id,
                                                                                         version=e.originator_version))
                           for e in stored},
            })
        return {"scenario": name, "streams": streams}


def main(version: str) -> None:
    target = HISTORIES / version
    if target.exists():
        sys.exit(f"{target} exists: reference histories are never rewritten, record a new version")
    target.mkdir(parents=True)
    for name, scenario in SCENARIOS.items():
        (target / f"{name}.json").write_text(json.dumps(record(name, scenario), indent=1, sort_keys=True) + "\n")
        print(f"recorded {target / name}.json")


if __name__ == "__main__":
    main(sys.argv[1])
