"""Deliveries from a git host's webhook: checked against the repository's secret, then read.

Three formats (docs/api.md "Webhooks"): GitHub (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256
of the raw body>`), Gitea and Forgejo (`X-Gitea-Signature: <hex HMAC-SHA256>`), GitLab
(`X-Gitlab-Token: <the secret itself>`). The signature is checked over the raw bytes, in
constant time, before anything of the body is parsed; only then is the body read, leniently
(the hosts add fields), for what a push needs: the ref, the commit it now points at and the
host's name of the repository.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import NamedTuple

import msgspec

from domain.errors import InvalidWebhookError, WebhookSignatureError
from domain.refs import tag_of

MIN_SECRET_CHARS = 16  # a webhook secret is only as good as its entropy
MAX_SECRET_CHARS = 256
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_DELETED = re.compile(r"0+")
_REF = re.compile(r"refs/[^\x00-\x1f\x7f]{1,250}")  # no control characters: the store cannot hold a NUL


class Host(StrEnum):
    GITHUB = "github"
    GITEA = "gitea"  # Forgejo sends the same
    GITLAB = "gitlab"


class Push(NamedTuple):
    ref: str
    commit: str
    repository: str  # the host's full name, e.g. "org/app"


class Delivery(NamedTuple):
    """What a checked delivery asks: a push to record, or nothing (and why, for the answer)."""

    delivery_id: str | None
    push: Push | None
    ignored: str | None = None


def check_secret(secret: str) -> None:
    if not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS:
        raise InvalidWebhookError(f"a webhook secret is {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters")


def verify(host: Host, headers: Mapping[str, str], body: bytes, secret: str) -> None:
    """Refuse a delivery not made with `secret` (headers: lower-case names)."""
    if host is Host.GITLAB:
        given, expected = headers.get("x-gitlab-token", ""), secret
    else:
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if host is Host.GITHUB:
            given, expected = headers.get("x-hub-signature-256", ""), f"sha256={digest}"
        else:
            given, expected = headers.get("x-gitea-signature") or headers.get("x-forgejo-signature", ""), digest
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise WebhookSignatureError("the delivery's signature does not match this repository's webhook secret")


class _Repository(msgspec.Struct):
    full_name: str


class _Project(msgspec.Struct):
    path_with_namespace: str


class _HubCommit(msgspec.Struct):
    id: str


class _HubPush(msgspec.Struct):  # GitHub, Gitea, Forgejo
    ref: str
    after: str
    repository: _Repository
    head_commit: _HubCommit | None = None  # the commit, also when `after` is an annotated tag's object


class _LabPush(msgspec.Struct):
    ref: str
    after: str
    project: _Project
    checkout_sha: str | None = None  # the commit, also when `after` is an annotated tag's object


def _commit_of(ref: str, after: str, tagged: str | None) -> str:
    """The commit a push runs: `after`, except for a tag's push, where `after` may be an
    annotated tag's own object and `tagged` (what the host says it tags) is the commit. A
    deletion (`after` all zeros) stays a deletion."""
    return tagged if tag_of(ref) and tagged and not _DELETED.fullmatch(after) else after


_EVENT_HEADER = {Host.GITHUB: "x-github-event", Host.GITEA: "x-gitea-event", Host.GITLAB: "x-gitlab-event"}
_PUSH_EVENTS = {Host.GITHUB: {"push"}, Host.GITEA: {"push"}, Host.GITLAB: {"Push Hook", "Tag Push Hook"}}
_DELIVERY_HEADERS = {Host.GITHUB: ("x-github-delivery",), Host.GITEA: ("x-gitea-delivery", "x-forgejo-delivery"),
                     Host.GITLAB: ("idempotency-key", "x-gitlab-event-uuid")}


def read(host: Host, headers: Mapping[str, str], body: bytes) -> Delivery:
    """A verified delivery, read. Anything but a push (a ping, an issue comment) and a branch
    or tag deletion ask for nothing; a push that cannot be read is InvalidWebhookError."""
    delivery_id = next((headers[name] for name in _DELIVERY_HEADERS[host] if headers.get(name)), None)
    event = headers.get(_EVENT_HEADER[host])
    if event not in _PUSH_EVENTS[host]:
        return Delivery(delivery_id, None, f"{event or 'an unnamed'} event: only pushes start runs")
    try:
        if host is Host.GITLAB:
            lab = msgspec.json.decode(body, type=_LabPush)
            push = Push(lab.ref, _commit_of(lab.ref, lab.after, lab.checkout_sha), lab.project.path_with_namespace)
        else:
            hub = msgspec.json.decode(body, type=_HubPush)
            tagged = hub.head_commit.id if hub.head_commit else None
            push = Push(hub.ref, _commit_of(hub.ref, hub.after, tagged), hub.repository.full_name)
    except msgspec.DecodeError as malformed:
        raise InvalidWebhookError(f"not a {host.value} push event: {malformed}") from None
    if _DELETED.fullmatch(push.commit):
        return Delivery(delivery_id, None, f"{push.ref} was deleted: nothing to run")
    if not _REF.fullmatch(push.ref):
        raise InvalidWebhookError(f"not a {host.value} push event: `ref` is not a ref: {push.ref[:80]!r}")
    if not _COMMIT.fullmatch(push.commit):
        raise InvalidWebhookError(f"not a {host.value} push event: `after` is not a commit id: {push.commit[:80]!r}")
    return Delivery(delivery_id, push)
