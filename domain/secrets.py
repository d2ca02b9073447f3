"""Secrets of a tenant or a repository: the rules for names and values, and where they apply.

A secret's value never enters the domain in plain text: aggregates hold ciphertext only
(domain.registry), and the value is checked here before it is encrypted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from domain.errors import InvalidSecretError

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
# The log masker replaces every occurrence of a value: a value of 1-3 characters would also
# turn every "a", "ok" or "the" in the log into "***", hiding the log rather than the secret.
MIN_VALUE_CHARS = 4
# An environment variable's text is limited by the kernel (128 KiB per string on Linux): in
# characters, so the API's schema can say it; 16 Ki characters are at most 64 KiB of UTF-8.
MAX_VALUE_CHARS = 16 * 1024

T = TypeVar("T")


class Scope(StrEnum):
    TENANT = "tenant"
    REPOSITORY = "repository"


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidSecretError(
            f"invalid secret name {name!r}: 1 to 128 letters, digits and \"_\", not starting with a digit "
            "(it becomes an environment variable)"
        )


def check_value(value: str) -> None:
    if len(value) < MIN_VALUE_CHARS:
        raise InvalidSecretError(
            f"a secret must be at least {MIN_VALUE_CHARS} characters: shorter ones cannot be masked in logs "
            "without hiding ordinary text"
        )
    if len(value) > MAX_VALUE_CHARS:
        raise InvalidSecretError(f"a secret is at most {MAX_VALUE_CHARS} characters")
    if "\0" in value:
        raise InvalidSecretError("a secret cannot hold a NUL character (an environment variable cannot)")


def context(scope: Scope, owner_id: str, name: str) -> str:
    """What a ciphertext is bound to: it decrypts only as this secret of this owner."""
    return f"{scope.value}:{owner_id}:{name}"


def for_job(names: list[str], tenant: Mapping[str, T], repository: Mapping[str, T]) -> tuple[dict[str, T], list[str]]:
    """(the secrets a job asks for, by name, and the names found nowhere). A repository's
    secret wins over its tenant's of the same name: the nearer owner decides."""
    chosen: dict[str, T] = {}
    missing: list[str] = []
    for name in names:
        if name in repository:
            chosen[name] = repository[name]
        elif name in tenant:
            chosen[name] = tenant[name]
        else:
            missing.append(name)
    return chosen, missing


def webhook_context(repository_id: str) -> str:
    """What a repository's webhook secret is bound to (never a job's secret of any name)."""
    return f"webhook:{repository_id}"


def status_token_context(repository_id: str) -> str:
    """What a repository's commit-status token is bound to."""
    return f"status-token:{repository_id}"


def sealed_for(job_id: str, attempt: int) -> str:
    """What a claim's sealed secrets are bound to: they open only for this attempt."""
    return f"{job_id}:{attempt}"


def subscription_context(subscription_id: str) -> str:
    """What an outgoing-webhook subscription's signing secret is bound to."""
    return f"subscription:{subscription_id}"
