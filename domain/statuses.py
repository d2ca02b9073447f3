"""Commit statuses sent back to the git host: what a run's state is called there, and the
request each host's status API takes (GitHub, Gitea/Forgejo, GitLab). Pure: the sender
(commands/status_sender.py) does the I/O."""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Any, NamedTuple
from urllib.parse import quote

from domain.errors import InvalidStatusTargetError


class StatusKind(StrEnum):
    GITHUB = "github"
    GITEA = "gitea"
    GITLAB = "gitlab"


class RunState(StrEnum):
    """A run as a commit status tells it, in the order a run goes through them."""

    PENDING = "pending"  # planned, its first job queued
    RUNNING = "running"  # a job has started
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (RunState.SUCCESS, RunState.FAILURE, RunState.CANCELLED)


_HOST_STATES = {
    StatusKind.GITHUB: {RunState.RUNNING: "pending", RunState.CANCELLED: "error"},
    StatusKind.GITEA: {RunState.RUNNING: "pending", RunState.CANCELLED: "error"},
    StatusKind.GITLAB: {RunState.FAILURE: "failed", RunState.CANCELLED: "canceled"},
}
DESCRIPTIONS = {RunState.PENDING: "queued", RunState.RUNNING: "running", RunState.SUCCESS: "succeeded",
                RunState.FAILURE: "failed", RunState.CANCELLED: "cancelled"}
# A host name of dot-separated labels (no empty one), and a port that exists: what the schema
# allows, the resolver and httpx must take.
HOST_PATTERN = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
PORT_PATTERN = r"(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
# The API's schema states the same (gateway/statuses.py).
# ASCII classes only: the schema's regex dialect (ECMA) and Python's disagree on what \s is.
API_URL_PATTERN = (r"^https?://" + HOST_PATTERN + PORT_PATTERN + r"(/[A-Za-z0-9._~%!$&'()*+,;=:@/-]*)?$")
PROJECT_PATTERN = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$"


class StatusRequest(NamedTuple):
    url: str
    headers: dict[str, str]
    json: dict[str, Any]


def check_target(kind: StatusKind, api_url: str, project: str) -> None:
    if not re.fullmatch(API_URL_PATTERN, api_url):
        raise InvalidStatusTargetError(f"api_url must be an http(s) URL without query, got {api_url[:100]!r}")
    if not re.fullmatch(PROJECT_PATTERN, project):
        raise InvalidStatusTargetError(f"project must be the host's name of the repository like org/app, "
                                       f"got {project[:100]!r}")


def status_request(kind: StatusKind, api_url: str, project: str, token: str, commit: str, state: RunState,
                   context: str, target_url: str) -> StatusRequest:
    """The host's "create a commit status" call (GitHub and Gitea: POST /repos/{owner}/{repo}/statuses/{sha};
    GitLab: POST /projects/{id}/statuses/{sha})."""
    host_state = _HOST_STATES[kind].get(state, state.value)
    base = api_url.rstrip("/")
    body = {"state": host_state, "target_url": target_url, "description": DESCRIPTIONS[state]}
    if kind is StatusKind.GITLAB:
        return StatusRequest(f"{base}/projects/{quote(project, safe='')}/statuses/{commit}",
                             {"PRIVATE-TOKEN": token}, {**body, "name": context})
    return StatusRequest(f"{base}/repos/{project}/statuses/{commit}",
                         {"Authorization": f"token {token}", "Accept": "application/json"},
                         {**body, "context": context})


def is_private(address: str) -> bool:
    """Loopback, link-local, private or otherwise not a public host: refused unless allowed,
    so a status target cannot reach into the cluster."""
    ip = ipaddress.ip_address(address)
    return not ip.is_global
