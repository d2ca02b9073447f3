"""What each git host's status API is sent for a run's state, and which addresses are private."""

from __future__ import annotations

import pytest

from domain.errors import InvalidStatusTargetError
from domain.statuses import RunState, StatusKind, check_target, is_private, status_request
from projections.status_outbox import status_context

SHA = "3f786850e387550fdab836ed7e6dc881de23001b"


@pytest.mark.parametrize(("kind", "state", "sent"), [
    (StatusKind.GITHUB, RunState.RUNNING, "pending"), (StatusKind.GITHUB, RunState.CANCELLED, "error"),
    (StatusKind.GITEA, RunState.FAILURE, "failure"), (StatusKind.GITLAB, RunState.RUNNING, "running"),
    (StatusKind.GITLAB, RunState.FAILURE, "failed"), (StatusKind.GITLAB, RunState.CANCELLED, "canceled"),
])
def test_each_host_gets_its_own_word_for_the_state(kind: StatusKind, state: RunState, sent: str) -> None:
    request = status_request(kind, "https://host/api/", "org/app", "tok", SHA, state, "ledgerci/ci", "https://ci/r")
    assert request.json["state"] == sent


def test_the_paths_and_credentials_each_host_expects() -> None:
    hub = status_request(StatusKind.GITHUB, "https://api.github.com", "org/app", "tok", SHA, RunState.SUCCESS,
                         "ledgerci/build", "https://ci/#/runs/1")
    assert hub.url == f"https://api.github.com/repos/org/app/statuses/{SHA}"
    assert hub.headers["Authorization"] == "token tok" and hub.json["context"] == "ledgerci/build"
    lab = status_request(StatusKind.GITLAB, "https://gitlab.example/api/v4", "group/sub/app", "tok", SHA,
                         RunState.SUCCESS, "ledgerci/build", "https://ci/#/runs/1")
    assert lab.url == f"https://gitlab.example/api/v4/projects/group%2Fsub%2Fapp/statuses/{SHA}"
    assert lab.headers == {"PRIVATE-TOKEN": "tok"} and lab.json["name"] == "ledgerci/build"


@pytest.mark.parametrize(("api_url", "project"), [("ftp://host", "org/app"), ("https://host/?q=1", "org/app"),
                                                  ("https://host", "app"), ("https://host\n", "org/app")])
def test_a_target_that_cannot_be_used_is_refused(api_url: str, project: str) -> None:
    with pytest.raises(InvalidStatusTargetError):
        check_target(StatusKind.GITHUB, api_url, project)


@pytest.mark.parametrize(("address", "private"), [("127.0.0.1", True), ("10.1.2.3", True), ("169.254.169.254", True),
                                                  ("::1", True), ("192.168.0.1", True), ("140.82.112.3", False)])
def test_private_addresses(address: str, private: bool) -> None:
    assert is_private(address) is private


def test_a_tags_run_has_a_context_of_its_own() -> None:
    assert status_context("build", None) == "ledgerci/build" and status_context(None, None) == "ledgerci/ci"
    assert status_context("build", "refs/tags/v1.0") == "ledgerci/build (v1.0)"
