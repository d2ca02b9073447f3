"""The workflow file as the user writes it: its shape, checked by msgspec, and its errors said
for people (domain/workflow.py compiles it into what ledgerci runs).

msgspec refuses unknown keys at every level, so a typo like `timout:` cannot pass; an error
names the line and the field, from the positions `domain.yaml_lines` kept while composing.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

import msgspec

from domain.errors import InvalidWorkflowError
from domain.yaml_lines import Located, Path, format_path

MAX_RETRIES = 10
DEFAULT_TIMEOUT_SECONDS = 60 * 60
MAX_CPUS = 1024.0  # more than any machine a job runs on: a larger number is a mistake
DEFAULT_POOL = "default"
# A run's place in its tenant's own queue (never against other tenants: fair share decides
# that). Lowest first, so that a tier's index is its rank.
Priority = Literal["low", "normal", "high"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
DEFAULT_PRIORITY: Priority = "normal"


class RawResources(msgspec.Struct, forbid_unknown_fields=True):
    cpus: Annotated[float, msgspec.Meta(gt=0, le=MAX_CPUS)] | None = None  # .inf and NaN are refused too
    memory: str | int | None = None


class RawJob(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    run: str
    image: str | None = None
    env: dict[str, Any] = {}  # values checked in _env, where the offending key is known
    secrets: list[str] = []
    timeout: int | str = DEFAULT_TIMEOUT_SECONDS
    retries: Annotated[int, msgspec.Meta(ge=0, le=MAX_RETRIES)] = 0
    resources: RawResources | None = None
    when: str = "on_success"
    allow_failure: bool = False
    pool: str = DEFAULT_POOL
    interruptible: bool = True
    concurrency: str | RawJobConcurrency | None = None
    artifacts: RawArtifacts | None = None
    cache: RawCache | None = None


class RawCache(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    key: str
    restore_keys: list[str] = []
    paths: list[str]
    policy: str = "pull-push"


class RawArtifacts(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    paths: list[str]
    expire_in: int | str = "7d"
    when: str = "on_success"


class RawJobConcurrency(msgspec.Struct, forbid_unknown_fields=True):
    group: str


class RawConcurrency(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    group: str
    cancel_in_progress: bool = False
    queue: str = "single"


class RawSchedule(msgspec.Struct, forbid_unknown_fields=True):
    cron: str
    branch: str = "main"


class RawOn(msgspec.Struct, forbid_unknown_fields=True):
    branches: list[str] | None = None
    schedule: list[RawSchedule] | None = None


class RawWorkflow(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str | None = None
    image: str | None = None
    env: dict[str, Any] = {}
    on: RawOn | None = None
    priority: str = DEFAULT_PRIORITY
    concurrency: str | RawConcurrency | None = None  # a plain string names the group
    jobs: list[RawJob]


def field_error(message: str, path: Path, at: Located) -> InvalidWorkflowError:
    return InvalidWorkflowError(message, line=at.line_of(path), field=format_path(path))


# Which raw struct sits at a path (indexes as "*"), to list the fields an unknown key could be.
SHAPES: dict[tuple[str, ...], type[msgspec.Struct]] = {
    (): RawWorkflow,
    ("on",): RawOn,
    ("on", "schedule", "*"): RawSchedule,
    ("concurrency",): RawConcurrency,
    ("jobs", "*"): RawJob,
    ("jobs", "*", "concurrency"): RawJobConcurrency,
    ("jobs", "*", "resources"): RawResources,
    ("jobs", "*", "artifacts"): RawArtifacts,
    ("jobs", "*", "cache"): RawCache,
}
TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "null": "null",
    "dict": "a mapping",
    "list": "a list",
    "NoneType": "null",
}


def explained(error: msgspec.ValidationError, at: Located) -> InvalidWorkflowError:
    """msgspec's "Expected `int`, got `str` - at `$.jobs[0].retries`", said for humans."""
    what, _, where = str(error).partition(" - at `")
    path: Path = tuple(
        int(index) if index else key
        for key, index in re.findall(r"\.([^.\[`]+)|\[(\d+)\]", where.rstrip("`"))
    )
    if unknown := re.fullmatch(r"Object contains unknown field `(.*)`", what):
        shape = SHAPES.get(tuple("*" if isinstance(p, int) else p for p in path))
        known = ", ".join(f.encode_name for f in msgspec.structs.fields(shape)) if shape else ""
        expected = f" (expected one of: {known})" if known else ""
        return field_error(f'unknown field "{unknown[1]}"{expected}', (*path, unknown[1]), at)
    if missing := re.fullmatch(r"Object missing required field `(.*)`", what):
        return InvalidWorkflowError(
            "required field is missing",
            line=at.line_of(path),
            field=format_path((*path, missing[1])),
        )
    message = re.sub(r"`([^`]*)`", lambda m: type_words(m[1]), what)
    return field_error(message[:1].lower() + message[1:], path, at)


def type_words(types: str) -> str:
    """`int | null` -> "an integer or null"."""
    return " or ".join(TYPE_WORDS.get(t, t) for t in types.split(" | "))
