"""A delivery is checked against the repository's webhook secret before anything is read, and
read for what a push needs, for each host's format."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from domain.errors import InvalidWebhookError, WebhookSignatureError
from domain.webhooks import Host, Push, read, verify

SECRET = "a-webhook-secret-of-some-length"
COMMIT = "3f786850e387550fdab836ed7e6dc881de23001b"
HUB = json.dumps({"ref": "refs/heads/main", "after": COMMIT, "repository": {"full_name": "org/app"}}).encode()
LAB = json.dumps({"object_kind": "push", "ref": "refs/heads/main", "after": COMMIT,
                  "project": {"path_with_namespace": "org/app"}}).encode()


def signed(host: Host, body: bytes, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {Host.GITHUB: {"x-github-event": "push", "x-github-delivery": "d-1",
                          "x-hub-signature-256": f"sha256={digest}"},
            Host.GITEA: {"x-gitea-event": "push", "x-gitea-delivery": "d-1", "x-gitea-signature": digest},
            Host.GITLAB: {"x-gitlab-event": "Push Hook", "x-gitlab-event-uuid": "d-1", "x-gitlab-token": secret},
            }[host]


@pytest.mark.parametrize(("host", "body"), [(Host.GITHUB, HUB), (Host.GITEA, HUB), (Host.GITLAB, LAB)])
def test_a_signed_push_is_read(host: Host, body: bytes) -> None:
    headers = signed(host, body)
    verify(host, headers, body, SECRET)
    assert read(host, headers, body) == (("d-1", Push("refs/heads/main", COMMIT, "org/app"), None))


@pytest.mark.parametrize(("host", "body"), [(Host.GITHUB, HUB), (Host.GITEA, HUB), (Host.GITLAB, LAB)])
def test_another_secret_a_changed_body_or_no_signature_is_refused(host: Host, body: bytes) -> None:
    with pytest.raises(WebhookSignatureError):
        verify(host, signed(host, body, "an-older-secret-rotated-away"), body, SECRET)
    if host is not Host.GITLAB:  # GitLab's token does not cover the body
        with pytest.raises(WebhookSignatureError):
            verify(host, signed(host, body), body.replace(b"main", b"evil"), SECRET)
    with pytest.raises(WebhookSignatureError):
        verify(host, {}, body, SECRET)


def test_pings_deletions_and_other_events_ask_for_nothing() -> None:
    assert read(Host.GITHUB, {"x-github-event": "ping"}, b"{}").ignored == "ping event: only pushes start runs"
    deleted = json.dumps({"ref": "refs/heads/old", "after": "0" * 40, "repository": {"full_name": "org/app"}}).encode()
    assert read(Host.GITEA, {"x-gitea-event": "push"}, deleted).ignored == "refs/heads/old was deleted: nothing to run"
    tag = LAB.replace(b"refs/heads/main", b"refs/tags/v1")
    assert read(Host.GITLAB, {"x-gitlab-event": "Tag Push Hook"}, tag).push == Push("refs/tags/v1", COMMIT, "org/app")


def test_an_annotated_tag_runs_the_commit_it_tags_not_the_tag_object() -> None:
    tag_object = "c" * 40  # what `after` holds for an annotated tag: the tag's own object
    hub = json.dumps({"ref": "refs/tags/v1", "after": tag_object, "head_commit": {"id": COMMIT},
                      "repository": {"full_name": "org/app"}}).encode()
    assert read(Host.GITHUB, {"x-github-event": "push"}, hub).push == Push("refs/tags/v1", COMMIT, "org/app")
    lab = json.dumps({"ref": "refs/tags/v1", "after": tag_object, "checkout_sha": COMMIT,
                      "project": {"path_with_namespace": "org/app"}}).encode()
    assert read(Host.GITLAB, {"x-gitlab-event": "Tag Push Hook"}, lab).push == Push("refs/tags/v1", COMMIT, "org/app")
    deleted = json.dumps({"ref": "refs/tags/v1", "after": "0" * 40, "head_commit": {"id": COMMIT},
                          "repository": {"full_name": "org/app"}}).encode()
    assert read(Host.GITHUB, {"x-github-event": "push"}, deleted).ignored == "refs/tags/v1 was deleted: nothing to run"


@pytest.mark.parametrize("body", [b"not json", b"{}", json.dumps({"ref": "refs/heads/main", "after": "xyz",
                                                                  "repository": {"full_name": "o/a"}}).encode(),
                                  json.dumps({"ref": "main\u0000", "after": COMMIT,
                                              "repository": {"full_name": "o/a"}}).encode()])
def test_a_push_that_cannot_be_read_says_why(body: bytes) -> None:
    with pytest.raises(InvalidWebhookError, match="not a github push event"):
        read(Host.GITHUB, {"x-github-event": "push"}, body)
