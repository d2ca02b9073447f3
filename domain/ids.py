"""Deterministic ids. Derived ids are what make repeated commands land on the same aggregate."""

from __future__ import annotations

import hashlib
from datetime import datetime
from uuid import UUID, uuid5

# Fixed namespace for every id ledgerci derives; changing it would orphan every stored stream.
LEDGERCI_NAMESPACE = UUID("8f6a2f0e-6a43-4c4e-9d3c-3c1f0f1b7a51")


def run_id_for(repository_id: str, commit: str, rerun: int = 0, tag: str | None = None) -> UUID:
    """One push of (repository, commit) is one run; a re-run gets the next counter.

    A tag's push is a run of its own (`tag`: its ref, from `domain.refs.tag_of`): tagging a commit that a
    branch already built is how a release starts, and the branch's run cannot stand for it.
    Branch pushes keep the derivation every stored run has."""
    key = f"run\n{repository_id}\n{commit.lower()}\n{rerun}"
    return uuid5(LEDGERCI_NAMESPACE, key if tag is None else f"{key}\n{tag}")


def job_id_for(run_id: UUID, job_name: str) -> UUID:
    return uuid5(run_id, f"job\n{job_name}")


def repository_aggregate_id(repository_id: str) -> UUID:
    return uuid5(LEDGERCI_NAMESPACE, f"repository\n{repository_id}")


def tenant_aggregate_id(tenant_id: str) -> UUID:
    return uuid5(LEDGERCI_NAMESPACE, f"tenant\n{tenant_id}")


def token_digest(token: str) -> str:
    """Tokens are stored only as this digest (high-entropy secrets: a plain SHA-256 suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_aggregate_id(token: str) -> UUID:
    """A token's aggregate id derives from its digest, so a lookup is one keyed read."""
    return uuid5(LEDGERCI_NAMESPACE, f"token\n{token_digest(token)}")


def concurrency_group_id(tenant_id: str, group: str) -> UUID:
    """Groups are per tenant: two tenants' groups of the same name are two streams."""
    return uuid5(LEDGERCI_NAMESPACE, f"concurrency-group\n{tenant_id}\n{group}")


def scheduled_run_id(repository_id: str, branch: str, cron: str, nominal: datetime) -> UUID:
    """A schedule fires once per nominal time: the run of (repository, branch, cron, time)."""
    return uuid5(LEDGERCI_NAMESPACE, f"scheduled\n{repository_id}\n{branch}\n{cron}\n{nominal.isoformat()}")


def delivery_id_for(subscription_id: str, run_id: str, event: str, job_id: str | None, attempt: int | None) -> UUID:
    """One delivery per (subscription, occurrence): the projector queueing it twice, or a
    rebuild queueing it again, lands on the same row, and a receiver can tell repeats apart."""
    return uuid5(LEDGERCI_NAMESPACE, f"delivery\n{subscription_id}\n{run_id}\n{event}\n{job_id}\n{attempt}")
