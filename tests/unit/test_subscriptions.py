"""Outgoing webhooks, the pure part: which events a subscription names, which URLs and
branches it may have, what each stored event is to a subscriber, and the signature, checked
with the recipe docs/api.md gives a receiver."""

from __future__ import annotations

import hashlib
import hmac
from uuid import uuid4

import pytest

from domain.errors import InvalidSubscriptionError
from domain.ids import delivery_id_for
from domain.subscriptions import EVENT_NAMES, Filter, check_branch, check_url, expand_events, signature


def test_patterns_expand_to_the_events_they_name_in_the_catalogues_order() -> None:
    assert expand_events(["run.failed", "job.failed"]) == ["run.failed", "job.failed"]
    assert expand_events(["job.*", "run.succeeded"]) == ["run.succeeded", "job.started", "job.succeeded",
                                                         "job.failed", "job.cancelled"]
    assert expand_events(["*"]) == list(EVENT_NAMES)
    assert expand_events(["*.failed"]) == ["run.failed", "job.failed"]


@pytest.mark.parametrize("patterns", [[], ["run.exploded"], ["push"], ["run.[f]ailed"], ["run.?ailed"]])
def test_a_pattern_that_names_no_event_is_refused_with_the_list(patterns: list[str]) -> None:
    with pytest.raises(InvalidSubscriptionError, match=r"run\.queued"):
        expand_events(patterns)


@pytest.mark.parametrize("url", ["ftp://host/hook", "https://host/hook#frag", "https://ho st/", "https://host/\n",
                                 "javascript:alert(1)", "https://[::1]/hook"])
def test_a_url_that_cannot_be_used_is_refused(url: str) -> None:
    with pytest.raises(InvalidSubscriptionError):
        check_url(url)


def test_a_receivers_url_may_carry_a_port_a_path_and_a_query() -> None:
    check_url("https://hooks.example.com:8443/ci/ledgerci?channel=builds&x=1")


@pytest.mark.parametrize("branch", ["", "has space", "a\x00b", "x~1", "a:b", "*"])
def test_a_branch_git_would_not_allow_is_refused(branch: str) -> None:
    with pytest.raises(InvalidSubscriptionError):
        check_branch(branch)


def test_a_filter_takes_its_events_of_its_repository_on_its_branch() -> None:
    failures_of_web_main = Filter(("run.failed",), "web", "main")
    assert failures_of_web_main.matches("run.failed", "web", "refs/heads/main")
    assert not failures_of_web_main.matches("run.succeeded", "web", "refs/heads/main")
    assert not failures_of_web_main.matches("run.failed", "api", "refs/heads/main")
    assert not failures_of_web_main.matches("run.failed", "web", "refs/tags/main")
    assert not failures_of_web_main.matches("run.failed", "web", None)
    assert Filter(("run.failed",), None, None).matches("run.failed", "api", None)


def test_the_signature_is_what_the_documented_recipe_computes() -> None:
    secret, body, timestamp = "whsec_abc", b'{"event":"run.failed"}', 1_765_000_000
    header = signature(secret, timestamp, body)
    # docs/api.md: split "t=...,v1=...", HMAC-SHA256 the secret over "<t>.<raw body>", compare.
    parts = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    assert parts["t"] == str(timestamp) and hmac.compare_digest(parts["v1"], expected)
    assert signature(secret, timestamp, body + b" ") != header
    assert signature("whsec_other", timestamp, body) != header


def test_one_delivery_id_per_subscription_and_occurrence() -> None:
    subscription, run, job = str(uuid4()), str(uuid4()), str(uuid4())
    first = delivery_id_for(subscription, run, "job.failed", job, 1)
    assert first == delivery_id_for(subscription, run, "job.failed", job, 1)
    assert len({first, delivery_id_for(subscription, run, "job.failed", job, 2),
                delivery_id_for(subscription, run, "run.failed", None, None),
                delivery_id_for(str(uuid4()), run, "job.failed", job, 1)}) == 4
