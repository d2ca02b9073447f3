"""A workflow's `concurrency:`: at most one run of a group at a time, per tenant
(docs/workflow.md). What the file says, and the group's name for one run; the group itself
is an aggregate (domain/concurrency_group.py). Kept apart from it so the workflow's shapes,
which the runner reads too, do not bring in the event store's library.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

import msgspec

# single: one run waits, a newer one replaces it; max: first in, first out, up to MAX_WAITING.
QueueMode = Literal["single", "max"]
QUEUE_MODES: tuple[QueueMode, ...] = get_args(QueueMode)
MAX_WAITING = 100
MAX_GROUP_TEMPLATE = 200

# `${{ ref }}` in a group's name: what each variable stands for, for one run.
_VARIABLE = re.compile(r"\$\{\{\s*([A-Za-z_]+)\s*\}\}")
GROUP_VARIABLES = ("repository", "ref", "branch", "commit", "workflow")


class Concurrency(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow's `concurrency:`, with the group's name as written (variables unexpanded)."""

    group: str
    cancel_in_progress: bool = False
    queue: QueueMode = "single"


def template_problem(template: str) -> str | None:
    """Why a group name cannot be used, if it cannot."""
    if not template.strip():
        return "the group name must not be empty"
    if len(template) > MAX_GROUP_TEMPLATE:
        return f"the group name is at most {MAX_GROUP_TEMPLATE} characters, got {len(template)}"
    for variable in _VARIABLE.findall(template):
        if variable not in GROUP_VARIABLES:
            return f'unknown variable "{variable}" (expected one of: {", ".join(GROUP_VARIABLES)})'
    if "${{" in _VARIABLE.sub("", template):
        return 'a "${{" that is not a variable like ${{ ref }}'
    return None


def group_name(template: str, *, repository: str, ref: str | None, commit: str, workflow: str | None) -> str:
    """The group a run joins: its template with the run's values in place of the variables."""
    branch = ref.removeprefix("refs/heads/") if ref else ""
    values = {"repository": repository, "ref": ref or "", "branch": branch, "commit": commit,
              "workflow": workflow or ""}
    return _VARIABLE.sub(lambda match: values[match[1]], template)
