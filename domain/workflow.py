"""The workflow file (`.ledgerci.yml`, see WORKFLOW.md): parsed, checked, compiled to a plan.

Two layers of structs on purpose. The private `Raw*` structs are the file as the user writes
it (`timeout: 20m`, `on: {branches: ...}`) and msgspec checks its shape, refusing unknown keys
so a typo like `timout:` cannot pass. The public `Workflow` / `JobSpec` are what the rest of
ledgerci runs: durations in seconds, env merged, image resolved. Every error names the line
and the field, which is why the YAML is composed by `domain.yaml_lines` and not just loaded.
"""

from __future__ import annotations

import re
from typing import Any, Literal, cast, get_args

import msgspec

from domain.artifacts import ArtifactSpec, compiled_artifacts
from domain.caches import CacheSpec, compiled_cache
from domain.concurrency import QUEUE_MODES, Concurrency, QueueMode, template_problem
from domain.errors import InvalidWorkflowError
from domain.schedule import MAX_SCHEDULES, Schedule, cron_problem
from domain.workflow_file import (
    DEFAULT_POOL,
    DEFAULT_PRIORITY,
    DEFAULT_TIMEOUT_SECONDS,
    PRIORITIES,
    Priority,
    RawConcurrency,
    RawJob,
    RawJobConcurrency,
    RawResources,
    RawSchedule,
    RawWorkflow,
    explained,
    field_error,
    type_words,
)
from domain.yaml_lines import Located, Path, compose_with_lines

MAX_WORKFLOW_BYTES = 256 * 1024
MAX_JOBS = 100
# A runaway job should not hold a runner for ever; a week is more than any build needs.
MAX_TIMEOUT_SECONDS = 7 * 24 * 60 * 60

_JOB_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What `git check-ref-format --branch` would take, roughly, and no glob characters.
_BRANCH_NAME = re.compile(r"(?!/)(?!.*//)(?!.*\.\.)[A-Za-z0-9._/-]{1,200}(?<!/)(?<!\.lock)")
# A runner pool's name: runners serve one (LEDGERCI_RUNNER_POOL), jobs ask for one.
POOL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# Digits bounded: int() refuses strings over 4300 digits with a ValueError, not our error.
_DURATION = re.compile(r"(\d{1,18})([smh]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600}
_MEMORY = re.compile(r"(\d{1,18})[kmg]?", re.IGNORECASE)
_MEMORY_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3, **dict.fromkeys("0123456789", 1)}
MAX_MEMORY_BYTES = 1024**4
_IDENTIFIER_RULE = 'use letters, digits and "_", not starting with a digit'

When = Literal["on_success", "on_failure", "always"]
_WHEN: tuple[When, ...] = get_args(When)


def priority_rank(priority: str) -> int:
    return PRIORITIES.index(cast(Priority, priority))


def capped_priority(asked: Priority, cap: Priority) -> Priority:
    """What a run gets: what its file asks for, never above its tenant's cap."""
    return asked if priority_rank(asked) <= priority_rank(cap) else cap


class Resources(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    cpus: float | None = None
    memory: str | None = None  # as written: "512m", "1g", "256k" or bytes

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory is None else memory_bytes(self.memory)


def memory_bytes(memory: str) -> int:
    """ "512m" as bytes; `memory` is one the parser accepted (or a runner setting of that form)."""
    digits = memory.rstrip("kmgKMG")
    return int(digits) * _MEMORY_UNITS[memory[-1].lower()]


class JobSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: str
    run: str
    image: str | None = None  # already resolved: the job's image, else the workflow's
    env: dict[str, str] = {}  # already merged: the workflow's env, then the job's
    secrets: list[str] = []
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    retries: int = 0
    resources: Resources | None = None
    when: When = "on_success"
    allow_failure: bool = False
    pool: str = DEFAULT_POOL  # the runners that may run it
    priority: Priority = DEFAULT_PRIORITY  # the run's (workflow-level), capped by the tenant's
    # False: a newer run of the concurrency group (cancel_in_progress) lets it finish once started.
    interruptible: bool = True
    # A job-level group: the job waits for it and holds it while it runs (first come, first
    # served). As written in the file; the planner records it with the run's values filled in.
    concurrency: str | None = None
    artifacts: ArtifactSpec | None = None  # files left for later jobs and for download
    cache: CacheSpec | None = None  # files kept between runs, by key


class Workflow(msgspec.Struct, frozen=True, kw_only=True):
    name: str | None = None
    image: str | None = None
    env: dict[str, str] = {}
    branches: list[str] | None = None
    priority: Priority = DEFAULT_PRIORITY
    concurrency: Concurrency | None = None
    schedules: list[Schedule] = []  # on.schedule
    jobs: list[JobSpec]


def parse_workflow(text: str | bytes) -> Workflow:
    """The plan in a workflow file; InvalidWorkflowError names the line and field at fault."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_WORKFLOW_BYTES:
        raise InvalidWorkflowError(
            f"the file is {size} bytes, over the limit of {MAX_WORKFLOW_BYTES} (256 KiB)"
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            line = text.count(b"\n", 0, e.start) + 1
            raise InvalidWorkflowError("the file is not valid UTF-8", line=line) from None
    located = compose_with_lines(text)
    if located.data is None:
        raise InvalidWorkflowError("the file is empty; expected a mapping with `jobs`", line=1)
    if not isinstance(located.data, dict):
        raise InvalidWorkflowError(
            f"expected a mapping at the top level (name, image, env, on, priority, concurrency, jobs), "
            f"got {type_words(type(located.data).__name__)}",
            line=located.line_of(()),
        )
    try:
        raw = msgspec.convert(located.data, RawWorkflow)
    except msgspec.ValidationError as e:
        raise explained(e, located) from None
    return _compiled(raw, located)


def _compiled(raw: RawWorkflow, at: Located) -> Workflow:
    image = _image(raw.image, ("image",), at)
    env = _env(raw.env, ("env",), at)
    branches = raw.on.branches if raw.on else None
    if branches is not None:
        if not branches:
            raise field_error(
                "an empty list matches no push; leave out `on` to match every push",
                ("on", "branches"),
                at,
            )
        for i, pattern in enumerate(branches):
            if not pattern:
                raise field_error("a branch pattern must not be empty", ("on", "branches", i), at)
    if raw.priority not in PRIORITIES:
        raise field_error(f'expected one of: high, normal, low, got "{raw.priority}"', ("priority",), at)
    priority = cast(Priority, raw.priority)
    if not 1 <= len(raw.jobs) <= MAX_JOBS:
        raise field_error(f"expected 1 to {MAX_JOBS} jobs, got {len(raw.jobs)}", ("jobs",), at)
    jobs: list[JobSpec] = []
    first_line: dict[str, int | None] = {}
    for i, job in enumerate(raw.jobs):
        spec = msgspec.structs.replace(_job(job, ("jobs", i), image, env, at), priority=priority)
        if spec.name in first_line:
            raise field_error(
                f'duplicate job name "{spec.name}" (first at line {first_line[spec.name]})',
                ("jobs", i, "name"),
                at,
            )
        first_line[spec.name] = at.line_of(("jobs", i, "name"))
        jobs.append(spec)
    grouped_job = next((i for i, job in enumerate(jobs) if job.concurrency is not None), None)
    if raw.concurrency is not None and grouped_job is not None:
        raise field_error(f"a job's concurrency cannot go with the workflow's (line {at.line_of(('concurrency',))}): "
                     "the whole run holds that group already", ("jobs", grouped_job, "concurrency"), at)
    return Workflow(name=raw.name, image=image, env=env, branches=branches, priority=priority,
                    concurrency=_concurrency(raw.concurrency, at),
                    schedules=_schedules(raw.on.schedule if raw.on else None, at), jobs=jobs)


def _schedules(raw: list[RawSchedule] | None, at: Located) -> list[Schedule]:
    if raw is None:
        return []
    if not 1 <= len(raw) <= MAX_SCHEDULES:
        raise field_error(f"expected 1 to {MAX_SCHEDULES} schedules, got {len(raw)}; leave out `schedule` for none",
                     ("on", "schedule"), at)
    schedules: list[Schedule] = []
    for i, entry in enumerate(raw):
        if problem := cron_problem(entry.cron):
            raise field_error(problem, ("on", "schedule", i, "cron"), at)
        if not _BRANCH_NAME.fullmatch(entry.branch):
            raise field_error(f'invalid branch name "{entry.branch}": a branch, not a pattern',
                         ("on", "schedule", i, "branch"), at)
        schedule = Schedule(cron=" ".join(entry.cron.split()), branch=entry.branch)
        if schedule in schedules:
            raise field_error("this schedule is listed twice", ("on", "schedule", i), at)
        schedules.append(schedule)
    return schedules


def _concurrency(raw: str | RawConcurrency | None, at: Located) -> Concurrency | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw, path = RawConcurrency(group=raw), ("concurrency",)
    else:
        path = ("concurrency", "group")
    if problem := template_problem(raw.group):
        raise field_error(problem, path, at)
    if raw.queue not in QUEUE_MODES:
        raise field_error(f'expected one of: {", ".join(QUEUE_MODES)}, got "{raw.queue}"', ("concurrency", "queue"), at)
    return Concurrency(group=raw.group, cancel_in_progress=raw.cancel_in_progress, queue=cast(QueueMode, raw.queue))


def _job(
    raw: RawJob, path: Path, default_image: str | None, workflow_env: dict[str, str], at: Located
) -> JobSpec:
    if not _JOB_NAME.fullmatch(raw.name):
        raise field_error(
            f'invalid job name "{raw.name}": use 1 to 64 letters, digits, "_", "." or "-"',
            (*path, "name"),
            at,
        )
    if not raw.run.strip():
        raise field_error("the script must not be empty", (*path, "run"), at)
    for i, secret in enumerate(raw.secrets):
        if not _VAR_NAME.fullmatch(secret):
            raise field_error(
                f'invalid secret name "{secret}": {_IDENTIFIER_RULE}',
                (*path, "secrets", i),
                at,
            )
        if secret in raw.secrets[:i]:
            raise field_error(f'secret "{secret}" is listed twice', (*path, "secrets", i), at)
    if not POOL_NAME.fullmatch(raw.pool):
        raise field_error(f'invalid pool name "{raw.pool}": use a-z, 0-9, "_" and "-", at most 63, '
                     "starting with a letter or digit", (*path, "pool"), at)
    if raw.when not in _WHEN:
        raise field_error(f'expected one of: {", ".join(_WHEN)}, got "{raw.when}"', (*path, "when"), at)
    return JobSpec(
        name=raw.name,
        run=raw.run,
        image=_image(raw.image, (*path, "image"), at) or default_image,
        env=workflow_env | _env(raw.env, (*path, "env"), at),
        secrets=raw.secrets,
        timeout_seconds=_seconds(raw.timeout, (*path, "timeout"), at),
        retries=raw.retries,
        resources=_resources(raw.resources, (*path, "resources"), at),
        when=cast(When, raw.when),  # checked against _WHEN above
        allow_failure=raw.allow_failure,
        pool=raw.pool,
        interruptible=raw.interruptible,
        concurrency=_job_group(raw.concurrency, path, at),
        artifacts=compiled_artifacts(raw.artifacts, (*path, "artifacts"), at),
        cache=compiled_cache(raw.cache, (*path, "cache"), at),
    )


def _job_group(raw: str | RawJobConcurrency | None, path: Path, at: Located) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        group, where = raw, (*path, "concurrency")
    else:
        group, where = raw.group, (*path, "concurrency", "group")
    if problem := template_problem(group):
        raise field_error(problem, where, at)
    return group


def _image(image: str | None, path: Path, at: Located) -> str | None:
    if image is not None and not image.strip():
        raise field_error("the image must not be empty", path, at)
    return image


def _env(env: dict[str, Any], path: Path, at: Located) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in env.items():
        if not _VAR_NAME.fullmatch(key):
            raise field_error(
                f'invalid variable name "{key}": {_IDENTIFIER_RULE}',
                (*path, key),
                at,
            )
        if isinstance(value, str):
            out[key] = value
        elif isinstance(value, bool | int | float):
            # The text as written: YAML 1.1 reads `010` as 8 and `1:30` as 90.
            out[key] = at.texts[(*path, key)]
        else:
            raise field_error(
                f"expected a string, number or boolean, got {type_words(type(value).__name__)}",
                (*path, key),
                at,
            )
    return out


def _seconds(timeout: int | str, path: Path, at: Located) -> int:
    match = _DURATION.fullmatch(timeout) if isinstance(timeout, str) else None
    seconds = int(match[1]) * _UNIT_SECONDS[match[2]] if match else timeout
    if not isinstance(seconds, int):
        raise field_error(
            f'expected a duration like "90s", "20m", "2h" or a number of seconds, got "{timeout}"',
            path,
            at,
        )
    if not 0 < seconds <= MAX_TIMEOUT_SECONDS:
        raise field_error(f"the timeout must be between 1 second and 7 days, got {timeout}", path, at)
    return seconds


def _resources(raw: RawResources | None, path: Path, at: Located) -> Resources | None:
    if raw is None:
        return None
    memory = None if raw.memory is None else str(raw.memory)
    if memory is not None:
        match = _MEMORY.fullmatch(memory)
        if not match or int(match[1]) == 0:
            raise field_error(
                f'expected memory like "512m", "1g", "256k" or a number of bytes, got "{memory}"',
                (*path, "memory"),
                at,
            )
        if memory_bytes(memory) > MAX_MEMORY_BYTES:
            raise field_error(f'memory is at most 1024g, got "{memory}"', (*path, "memory"), at)
    return Resources(cpus=raw.cpus, memory=memory)
