"""Outgoing webhooks: a tenant's subscriptions to what its runs and jobs do, and how a
delivery is signed.

A subscription names the events it wants (`run.failed`, `job.*`, `*`), and optionally one
repository and one branch. Each occurrence it matches is queued once, in the projector's
transaction (projections/webhook_outbox.py), and delivered at least once
(commands/webhook_sender.py), signed with the subscription's secret, which ledgerci makes and
shows once:

    X-Ledgerci-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">

The receiver recomputes the HMAC over the bytes it received, compares in constant time and
refuses a `t` too far from its clock (a replayed delivery); docs/api.md gives the recipe.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.errors import InvalidSubscriptionError
from domain.run import Run
from domain.statuses import HOST_PATTERN, PORT_PATTERN

RUN_EVENTS = ("run.queued", "run.started", "run.succeeded", "run.failed", "run.cancelled", "run.skipped")
JOB_EVENTS = ("job.started", "job.succeeded", "job.failed", "job.cancelled")
EVENT_NAMES = RUN_EVENTS + JOB_EVENTS
# What a subscription may name: an event, all of a kind (run.*, job.*), one outcome of both
# (*.failed), or everything (*). The API's schema lists the same.
PATTERNS = (*EVENT_NAMES, "run.*", "job.*", *dict.fromkeys(f"*.{name.split('.')[1]}" for name in EVENT_NAMES), "*")

# The API's schema states the same (gateway/subscriptions.py). ASCII classes only: the schema's
# regex dialect (ECMA) and Python's disagree on what \s is.
URL_PATTERN = (r"^https?://" + HOST_PATTERN + PORT_PATTERN + r"(/[A-Za-z0-9._~%!$&'()*+,;=:@/-]*)?"
               r"(\?[A-Za-z0-9._~%!$&'()*+,;=:@/?-]*)?$")
BRANCH_PATTERN = r"^[^\x00-\x20\x7f~^:?*\[\\]{1,250}$"  # what git allows in a branch name, roughly


def check_url(url: str) -> None:
    if not re.fullmatch(URL_PATTERN, url):
        raise InvalidSubscriptionError(f"url must be an http(s) URL, got {url[:100]!r}")


def check_branch(branch: str | None) -> None:
    if branch is not None and not re.fullmatch(BRANCH_PATTERN, branch):
        raise InvalidSubscriptionError(f"branch must be a branch name like main, got {branch[:100]!r}")


def expand_events(patterns: Sequence[str]) -> list[str]:
    """The events `patterns` name, in the catalogue's order: stored expanded, so the projector
    matches a name, and a subscription to `run.*` does not grow when an event is added."""
    if not patterns:
        raise InvalidSubscriptionError(f"events: name at least one of {', '.join(EVENT_NAMES)} "
                                       "(or run.*, job.*, *.failed, *)")
    chosen: set[str] = set()
    for pattern in patterns:
        matched = fnmatch.filter(EVENT_NAMES, pattern) if pattern in PATTERNS else []
        if not matched:
            raise InvalidSubscriptionError(f"events: {pattern[:100]!r} names no event; the events are "
                                           f"{', '.join(EVENT_NAMES)} (or run.*, job.*, *.failed, *)")
        chosen.update(matched)
    return [name for name in EVENT_NAMES if name in chosen]


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Ledgerci-Signature header of `body` sent at `timestamp` (unix seconds)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


# ----- what happened, as a subscription names it ---------------------------------------------------

class Occurrence(NamedTuple):
    event: str  # one of EVENT_NAMES
    run_id: str
    job_id: str | None = None
    attempt: int | None = None


_RUN_ENDS = {Run.RunSucceeded: "run.succeeded", Run.RunFailed: "run.failed", Run.RunCancelled: "run.cancelled",
             Run.RunSkipped: "run.skipped"}
_JOB_ENDS = {Run.JobSucceeded: "job.succeeded", Run.JobFailed: "job.failed", Run.JobCancelled: "job.cancelled"}


def occurrences(event: Any) -> tuple[Occurrence, ...]:
    """What a stored event is to a subscriber (most events are nothing to one). A run has
    started at its first job's start: every start names it, and its one delivery id keeps it once."""
    kind = type(event)
    if kind is Run.RunPlanned:
        return (Occurrence("run.queued", str(event.originator_id)),)
    if kind is Run.JobStarted:
        run_id = str(event.originator_id)
        return (Occurrence("run.started", run_id), Occurrence("job.started", run_id, event.job_id, event.attempt))
    if kind in _RUN_ENDS:
        return (Occurrence(_RUN_ENDS[kind], str(event.originator_id)),)
    if kind in _JOB_ENDS:
        return (Occurrence(_JOB_ENDS[kind], str(event.originator_id), event.job_id, event.attempt),)
    return ()


class Filter(NamedTuple):
    events: tuple[str, ...]
    repository_id: str | None
    branch: str | None

    def matches(self, event: str, repository_id: str, ref: str | None) -> bool:
        return (event in self.events and self.repository_id in (None, repository_id)
                and (self.branch is None or ref == f"refs/heads/{self.branch}"))


# ----- the subscription ----------------------------------------------------------------------------

class WebhookSubscription(Aggregate):
    """A tenant's subscription. Its id is random (two alike are two subscriptions); its secret
    is held as ciphertext (sealing.at_rest), bound to the id."""

    class Subscribed(Aggregate.Created):
        tenant_id: str
        url: str
        events: list[str]  # expanded: names from EVENT_NAMES
        repository_id: str | None
        branch: str | None
        ciphertext: str  # the signing secret, encrypted before the aggregate sees it
        actor: str

    def __init__(self, tenant_id: str, url: str, events: list[str], repository_id: str | None, branch: str | None,
                 ciphertext: str, actor: str) -> None:
        self.tenant_id = tenant_id
        self.url = url
        self.events = events
        self.repository_id = repository_id
        self.branch = branch
        self.ciphertext = ciphertext
        self.created_by = actor
        self.deleted = False

    @classmethod
    def subscribe(cls, *, subscription_id: UUID, tenant_id: str, url: str, events: list[str], repository_id: str | None,
                  branch: str | None, ciphertext: str, actor: str, at: datetime) -> WebhookSubscription:
        return cls._create(cls.Subscribed, id=subscription_id, timestamp=at, tenant_id=tenant_id, url=url,
                           events=events, repository_id=repository_id, branch=branch, ciphertext=ciphertext,
                           actor=actor)

    @property
    def filter(self) -> Filter:
        return Filter(tuple(self.events), self.repository_id, self.branch)

    def delete(self, at: datetime, actor: str) -> bool:
        """Idempotent. Deliveries already queued for it are not sent any more."""
        if self.deleted:
            return False
        self.trigger_event(self.Unsubscribed, timestamp=at, actor=actor)
        return True

    class Unsubscribed(Aggregate.Event):
        actor: str

        def apply(self, subscription: WebhookSubscription) -> None:
            subscription.deleted = True
