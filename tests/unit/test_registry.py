"""Repositories: what a clone URL may be, and what deleting one means."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from domain.clone_url import check_clone_url
from domain.errors import InvalidCloneUrlError
from domain.registry import Repository
from gitcache.commits import summarize_commit

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("url", ["https://git.example.com/acme/web.git", "ssh://git@host/acme/web.git",
                                 "git@github.com:acme/web.git", "git://host/web.git", "file:///srv/git/web.git"])
def test_clone_urls_git_fetches_from_any_service_are_accepted(url: str) -> None:
    check_clone_url(url)


@pytest.mark.parametrize(("url", "says"), [
    ("../web.git", "no scheme"), ("srv/web.git", "no scheme"), ("file://srv/web.git", "three slashes"),
    ("file:web.git", "not an absolute path"), ("ext::sh -c evil", "not one of"), ("https:///web.git", "no host"),
])
def test_clone_urls_that_would_fail_at_the_first_push_are_refused_with_what_to_write(url: str, says: str) -> None:
    with pytest.raises(InvalidCloneUrlError, match=says):
        check_clone_url(url)


def test_a_deleted_repository_keeps_no_secrets_and_deletes_once() -> None:
    repository = Repository.register(repository_id="web", tenant_id="acme", clone_url="file:///x", actor="a", at=T0)
    repository.set_secret("TOKEN", "ciphertext", T0, "a")
    assert repository.delete(T0, "admin") is True
    assert repository.delete(T0, "admin") is False
    assert repository.deleted and repository.secrets == {}


def test_a_commit_summary_is_its_first_message_line_and_author_as_clean_bounded_text() -> None:
    raw = (b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
           b"author Ada Lovelace <ada@example.com> 1700000000 +0100\n"
           b"committer Bob <bob@example.com> 1700000001 +0000\n\n"
           b"\nFix the build\x00 now\n\nA longer body.\n" + b"x" * 10)
    summary = summarize_commit(raw)
    assert summary.subject == "Fix the build  now"
    assert summary.author == "Ada Lovelace <ada@example.com>"
    assert len(summarize_commit(b"author A <a> 1 +0000\n\n" + b"y" * 5000).subject) == 200
    assert summarize_commit(b"tree x\n\n") == ("", "")
