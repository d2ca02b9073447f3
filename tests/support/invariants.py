"""The invariant checker: reads the full event history and says what, if anything, is wrong.

Every fault test ends by running it. It checks ARCHITECTURE.md's promises against what the
event store recorded (not against what any service says):
- one run per (repository, commit, re-run number), with the id derived from them; a
  schedule's run once per (repository, branch, cron, nominal time), its id derived from those;
- at most one terminal outcome per job; every run ends in exactly one terminal state;
- attempts strictly increasing; each started once, by one runner;
- no result, heartbeat or finish accepted from an attempt that was not current;
- no attempt declared lost while its lease was still valid (so no two attempts of one job
  ever held a lease at the same time);
- no tenant ever had more attempts running than its `max_concurrent_jobs` at that moment
  (counted in the store's global order: a start raises the count, the attempt's end lowers it);
- concurrency groups: a run of a group starts a job only once it took the group, never while
  another run of the group has started and not ended, and no group is left held by (or with
  waiting) a run that has ended;
- artifacts and caches: recorded only by the runner holding the attempt, in the save of that
  attempt's own outcome (right before it); each artifact path once per attempt, under the
  object name derived from (tenant, repository, run, job, attempt, path); at most one cache
  restore and one cache save per attempt;
- outgoing webhooks: exactly one delivery queued per (subscription, occurrence it matched),
  each with the id derived from them, none for what no live subscription matched;
- the read models equal a rebuild from the history.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from commands.app import LedgerApp
from commands.store import eventsourcing_env
from domain.artifacts import object_name
from domain.ids import concurrency_group_id, delivery_id_for, run_id_for, scheduled_run_id
from domain.job import RUNNER_LOST
from domain.refs import tag_of
from domain.run import Run
from domain.subscriptions import WebhookSubscription, occurrences
from projections.rebuild import verify
from projections.sql import open_database

TERMINAL_JOB = {"JobSucceeded", "JobFailed", "JobSkipped", "JobCancelled"}
TERMINAL_RUN = {"RunSucceeded", "RunFailed", "RunSkipped", "RunCancelled"}
ATTEMPT_ENDS = TERMINAL_JOB | {"JobAttemptAbandoned"}


def all_events(app: LedgerApp) -> list[tuple[int, Any]]:
    return [item for page in app.store.history_pages() for item in page]


def check_history(events: list[tuple[int, Any]], *, require_final: bool = True,
                  tag_runs_under_commit_ids: bool = False) -> list[str]:
    """Every invariant over a history. `tag_runs_under_commit_ids`: the history may hold tag runs
    recorded before a tag's push was a run of its own (with their commit's id); none made now has."""
    problems: list[str] = []
    runs: dict[Any, list[Any]] = defaultdict(list)
    for _, event in events:
        if isinstance(event, Run.Event) or type(event).__qualname__.startswith("Run."):
            runs[event.originator_id].append(event)
    problems += quota_breaches(events)
    problems += group_breaches(events)
    keys: dict[tuple, Any] = {}
    for run_id, stream in runs.items():
        problems += [f"run {run_id}: {p}" for p in _check_run(stream, require_final)]
        problems += [f"run {run_id}: {p}" for p in artifact_breaches(stream)]
        key, derived = _run_key(stream, tag_runs_under_commit_ids)
        if key is None:
            continue
        if key in keys:
            problems.append(f"two runs for {key}: {keys[key]} and {run_id}")
        keys[key] = run_id
        if run_id not in derived:
            problems.append(f"run {run_id} is not the derived id of {key}")
    return problems


WITH_OUTCOME = {"ArtifactUploaded", "CacheRestored", "CacheSaved"}  # recorded in the save of an outcome


def artifact_breaches(stream: list[Any]) -> list[str]:
    problems = []
    first = stream[0]
    seen: set[tuple[str, str, int, str]] = set()
    for index, event in enumerate(stream):
        kind = type(event).__name__
        if kind not in WITH_OUTCOME:
            continue
        key = (kind, event.job_id, event.attempt, event.path if kind == "ArtifactUploaded" else "")
        if key in seen:
            problems.append(f"{key} recorded twice")
        seen.add(key)
        if kind == "ArtifactUploaded":
            derived = object_name(first.tenant_id, first.repository_id, str(event.originator_id), event.job_id,
                                  event.attempt, event.path)
            if event.object != derived:
                problems.append(f"artifact {key} stored as {event.object!r}, not {derived!r}")
        outcome = next((e for e in stream[index + 1:] if type(e).__name__ not in WITH_OUTCOME), None)
        if (type(outcome).__name__ not in ("JobSucceeded", "JobFailed") or outcome.job_id != event.job_id
                or outcome.attempt != event.attempt or outcome.timestamp != event.timestamp
                or outcome.actor != event.actor):
            problems.append(f"{key} not recorded with its attempt's outcome")
    return problems


def _run_key(stream: list[Any], tag_runs_under_commit_ids: bool) -> tuple[tuple | None, set[Any]]:
    """What makes the run unique, and the ids it may have, derived from it: (repository, commit,
    re-run, tag) for a push (tag None for a branch's), (repository, branch, cron, nominal time) for
    a schedule's firing. A tag's run recorded before tags had runs of their own carries the id
    derived without the tag: accepted only if the caller says the history may hold one."""
    first = stream[0]
    if type(first).__name__ != "RunRequested":
        return None, set()
    if len(stream) > 1 and type(stream[1]).__name__ == "RunScheduled":
        fired = stream[1]
        key = ("scheduled", first.repository_id, fired.branch, fired.cron, fired.nominal_at)
        return key, {scheduled_run_id(*key[1:])}
    key = (first.repository_id, first.commit, first.rerun, tag_of(first.ref))
    legacy = {run_id_for(*key[:3])} if key[3] is not None and tag_runs_under_commit_ids else set()
    return key, {run_id_for(*key)} | legacy


def running_over_time(events: list[tuple[int, Any]]) -> Iterator[tuple[Any, str, int, int | None]]:
    """(event, tenant, attempts running after it, the tenant's quota then) for every start and
    end of an attempt, in the store's global order. (A history without the tenant's own events
    has no quota to check.)"""
    quota: dict[str, int] = {}
    tenant_of: dict[Any, str] = {}  # tenant aggregate or run -> tenant id
    running: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for _, event in events:
        kind = type(event).__qualname__
        if kind == "Tenant.TenantCreated":
            tenant_of[event.originator_id] = event.tenant_id
            quota[event.tenant_id] = event.max_concurrent_jobs
        elif kind == "Tenant.TenantUpdated" and "max_concurrent_jobs" in event.changes:
            quota[tenant_of[event.originator_id]] = int(event.changes["max_concurrent_jobs"])
        elif kind == "Run.RunRequested":
            tenant_of[event.originator_id] = event.tenant_id
        elif kind in ("Run.JobStarted", *(f"Run.{end}" for end in ATTEMPT_ENDS)):
            tenant_id = tenant_of[event.originator_id]
            attempts = running[tenant_id]
            before = len(attempts)
            if kind == "Run.JobStarted":
                attempts.add((event.job_id, event.attempt))
            else:
                attempts.discard((event.job_id, event.attempt))
            if len(attempts) != before:
                yield event, tenant_id, len(attempts), quota.get(tenant_id)


def quota_breaches(events: list[tuple[int, Any]]) -> list[str]:
    return [f"tenant {tenant_id}: {count} attempts running after {type(event).__name__} of job {event.job_id} "
            f"attempt {event.attempt}, its max_concurrent_jobs was {quota}"
            for event, tenant_id, count, quota in running_over_time(events)
            if type(event).__name__ == "JobStarted" and quota is not None and count > quota]


def group_breaches(events: list[tuple[int, Any]]) -> list[str]:
    """A run is a member of a group from joining it (`RunJoinedGroup`) until it leaves (the end
    of the run, or `RunLeftGroup` once a job-level group's job ended). A member starts a job
    only while the group's own stream says it holds the group, never while another member has
    started a job and not left; and no group is left held by, or waited for by, an ended run."""
    problems: list[str] = []
    tenant_of: dict[str, str] = {}
    member_of: dict[str, Any] = {}  # run -> the group (aggregate id) it is a member of now
    holder: dict[Any, str | None] = {}
    waiting: dict[Any, list[str]] = defaultdict(list)
    running: dict[Any, str] = {}  # group -> its member that has started a job and not left
    ended: set[str] = set()

    def leaves(run: str) -> None:
        group = member_of.pop(run, None)
        if group is not None and running.get(group) == run:
            del running[group]

    for position, event in events:
        kind, source = type(event).__qualname__, str(event.originator_id)
        if kind == "Run.RunRequested":
            tenant_of[source] = event.tenant_id
        elif kind == "Run.RunJoinedGroup":
            member_of[source] = concurrency_group_id(tenant_of[source], event.group)
        elif kind == "Run.RunLeftGroup":
            leaves(source)
        elif kind == "ConcurrencyGroup.GroupTaken":
            if holder.get(event.originator_id) is not None:
                problems.append(f"group {event.originator_id}: taken by run {event.run_id} at {position} "
                                f"while held by run {holder[event.originator_id]}")
            holder[event.originator_id] = event.run_id
            if event.run_id in waiting[event.originator_id]:
                waiting[event.originator_id].remove(event.run_id)
        elif kind == "ConcurrencyGroup.RunWaiting":
            waiting[event.originator_id].append(event.run_id)
        elif kind == "ConcurrencyGroup.RunLeft":
            if holder.get(event.originator_id) == event.run_id:
                holder[event.originator_id] = None
            elif event.run_id in waiting[event.originator_id]:
                waiting[event.originator_id].remove(event.run_id)
        elif kind == "Run.JobStarted" and source in member_of:
            group = member_of[source]
            if holder.get(group) != source:
                problems.append(f"run {source}: started a job at {position} while group {group} was held by "
                                f"{holder.get(group)}")
            if running.get(group, source) != source:
                problems.append(f"group {group}: run {source} started a job at {position} while run "
                                f"{running[group]} of the group had not ended")
            running[group] = source
        elif kind.removeprefix("Run.") in TERMINAL_RUN:
            ended.add(source)
            leaves(source)
    for group, run in holder.items():
        if run in ended:
            problems.append(f"group {group}: left held by run {run}, which has ended")
    for group, runs in waiting.items():
        problems += [f"group {group}: run {run} left waiting after it ended" for run in runs if run in ended]
    return problems


def _check_run(stream: list[Any], require_final: bool) -> list[str]:
    problems = []
    kinds = [type(e).__name__ for e in stream]
    if kinds[0] != "RunRequested" or kinds.count("RunRequested") != 1:
        problems.append(f"expected one RunRequested first, got {kinds[:3]}")
    if [e.originator_version for e in stream] != list(range(1, len(stream) + 1)):
        problems.append("versions are not 1..n")
    finals = [k for k in kinds if k in TERMINAL_RUN]
    if len(finals) > 1:
        problems.append(f"more than one terminal state: {finals}")
    if require_final and not finals:
        problems.append(f"never ended; last events {kinds[-3:]}")
    current: dict[str, int] = {}
    holder: dict[str, tuple[int, str] | None] = {}
    lease: dict[tuple[str, int], datetime] = {}
    ended: dict[str, int] = defaultdict(int)
    abandoned: dict[str, tuple[int, str]] = {}
    for event in stream:
        kind = type(event).__name__
        job = getattr(event, "job_id", None)
        if kind == "JobQueued":
            if event.attempt <= current.get(job, 0):
                problems.append(f"job {job}: attempt {event.attempt} after {current.get(job)}")
            current[job] = event.attempt
            holder[job] = None
        elif kind == "JobStarted":
            if event.attempt != current.get(job) or holder.get(job) is not None:
                problems.append(f"job {job}: start of attempt {event.attempt} that is not current and free")
            holder[job] = (event.attempt, event.runner_id)
            lease[(job, event.attempt)] = event.lease_expires_at
        elif kind == "JobFailed" and abandoned.get(job) == (event.attempt, event.error):
            pass  # the consequence of an abandoned attempt with no retry left, in the same decision
        elif kind in ("JobLeaseExtended", "JobSucceeded", "JobFailed") and event.actor.startswith("runner:"):
            if holder.get(job) != (event.attempt, event.actor.removeprefix("runner:")):
                problems.append(f"job {job}: {kind} accepted from {event.actor} attempt {event.attempt}, "
                                f"holder is {holder.get(job)}")
            if kind == "JobLeaseExtended":
                lease[(job, event.attempt)] = event.lease_expires_at
        elif kind == "JobAttemptAbandoned":
            expiry = lease.get((job, event.attempt))
            if event.reason == RUNNER_LOST and (expiry is None or event.timestamp < expiry):
                problems.append(f"job {job}: attempt {event.attempt} declared lost at {event.timestamp} "
                                f"while its lease ran to {expiry}")
            holder[job] = None
            abandoned[job] = (event.attempt, event.reason)
        if kind in TERMINAL_JOB:
            ended[job] += 1
            holder[job] = None
            if ended[job] > 1:
                problems.append(f"job {job}: more than one terminal outcome")
    return problems


def expected_deliveries(events: list[tuple[int, Any]], upto: int) -> set[str]:
    """The delivery ids the history up to `upto` calls for: every occurrence that a
    subscription of the run's tenant, live at that point of the global order, matches."""
    subscriptions: dict[str, WebhookSubscription.Subscribed] = {}
    runs: dict[str, tuple[str, str, str | None]] = {}  # run -> tenant, repository, ref
    expected: set[str] = set()
    for position, event in events:
        if position > upto:
            break
        if isinstance(event, WebhookSubscription.Subscribed):
            subscriptions[str(event.originator_id)] = event
        elif isinstance(event, WebhookSubscription.Unsubscribed):
            subscriptions.pop(str(event.originator_id), None)
        elif isinstance(event, Run.RunRequested):
            runs[str(event.originator_id)] = (event.tenant_id, event.repository_id, event.ref)
        for occurrence in occurrences(event):
            tenant_id, repository_id, ref = runs[occurrence.run_id]
            for subscription_id, subscribed in subscriptions.items():
                wanted = (tuple(subscribed.events), subscribed.repository_id, subscribed.branch)
                if subscribed.tenant_id == tenant_id and _matches(wanted, occurrence.event, repository_id, ref):
                    expected.add(str(delivery_id_for(subscription_id, occurrence.run_id, occurrence.event,
                                                     occurrence.job_id, occurrence.attempt)))
    return expected


def _matches(wanted: tuple[tuple[str, ...], str | None, str | None], event: str, repository_id: str,
             ref: str | None) -> bool:
    # Written out again, not domain.subscriptions.Filter: the checker must not share the
    # projector's mistakes.
    events, repository, branch = wanted
    if branch is not None and ref != f"refs/heads/{branch}":
        return False
    return event in events and repository in (None, repository_id)


def delivery_breaches(events: list[tuple[int, Any]], live: Any) -> list[str]:
    tracked = live.query("SELECT position FROM lci_tracking WHERE projection = 'runs'")
    # Only what both the history read and the tracked position cover: the store and the
    # projector may have moved on between the reads.
    upto = min(int(tracked[0][0]) if tracked else 0, events[-1][0] if events else 0)
    queued = live.query("SELECT id FROM lci_webhook_deliveries WHERE position <= ?", (upto,))
    rows = {row[0] for row in queued}  # the primary key: a delivery is never queued twice
    expected = expected_deliveries(events, upto)
    problems = [f"webhook delivery {row} queued for no occurrence a live subscription matched"
                 for row in sorted(rows - expected)]
    problems += [f"webhook delivery {row} never queued" for row in sorted(expected - rows)]
    return problems


def check_invariants(database_url: str, *, require_final: bool = True) -> list[str]:
    app = LedgerApp(env=eventsourcing_env(database_url))
    live = open_database(database_url)
    try:
        events = all_events(app)
        differences, _ = verify(live, lambda position, limit: list(app.store.events_after(position, limit)))
        return check_history(events, require_final=require_final) + delivery_breaches(events, live) + differences
    finally:
        live.close()
        app.close()
