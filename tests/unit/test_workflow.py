"""The workflow file, as WORKFLOW.md describes it: what parses, what is refused, and where."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import InvalidWorkflowError
from domain.refs import ref_matches
from domain.workflow import (
    MAX_WORKFLOW_BYTES,
    JobSpec,
    Resources,
    Workflow,
    capped_priority,
    parse_workflow,
)

pytestmark = pytest.mark.unit

SPEC_EXAMPLE = """\
name: build-and-test          # optional; defaults to the repository id
image: python:3.12-slim       # default container image for every job (Docker/Kubernetes executors)
env:                          # optional, for every job
  PIP_DISABLE_PIP_VERSION_CHECK: "1"
on:
  branches: [main, "release/*"]   # optional: only pushes whose ref matches start a run
jobs:                         # a list: the jobs run in this order, one after another
  - name: lint
    run: ruff check .         # a shell script, run with `sh -e` in the checked-out commit
  - name: test
    image: python:3.11-slim   # overrides the default image
    run: |
      pip install -e .
      pytest -q
    env: {PYTHONHASHSEED: "0"}
    secrets: [CODECOV_TOKEN]  # names of repository or tenant secrets, injected as env vars
    timeout: 20m              # default 60m; units s, m, h
    retries: 1                # extra attempts after a lost runner or a timeout; default 0
    resources: {cpus: 1.5, memory: 1g}
  - name: notify
    when: always              # on_success (default) | on_failure | always
    allow_failure: true       # a failure here does not fail the run
    run: echo "done"
"""


def parse(text: str) -> Workflow:
    return parse_workflow(textwrap.dedent(text))


def refused(text: str | bytes) -> InvalidWorkflowError:
    with pytest.raises(InvalidWorkflowError) as caught:
        parse_workflow(textwrap.dedent(text) if isinstance(text, str) else text)
    return caught.value


def one_job(**fields: object) -> str:
    return yaml.safe_dump({"jobs": [{"name": "a", "run": "true", **fields}]})


# -- the example -------------------------------------------------------------------------------


def test_the_spec_example_parses_to_its_plan() -> None:
    workflow = parse_workflow(SPEC_EXAMPLE)

    base_env = {"PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    assert workflow == Workflow(
        name="build-and-test",
        image="python:3.12-slim",
        env=base_env,
        branches=["main", "release/*"],
        jobs=[
            JobSpec(name="lint", run="ruff check .", image="python:3.12-slim", env=base_env),
            JobSpec(
                name="test",
                run="pip install -e .\npytest -q\n",
                image="python:3.11-slim",
                env={**base_env, "PYTHONHASHSEED": "0"},
                secrets=["CODECOV_TOKEN"],
                timeout_seconds=20 * 60,
                retries=1,
                resources=Resources(cpus=1.5, memory="1g"),
            ),
            JobSpec(
                name="notify",
                run='echo "done"',
                image="python:3.12-slim",
                env=base_env,
                when="always",
                allow_failure=True,
            ),
        ],
    )


def test_the_spec_example_is_accepted_as_utf8_bytes() -> None:
    assert parse_workflow(SPEC_EXAMPLE.encode()) == parse_workflow(SPEC_EXAMPLE)


def test_defaults_apply_when_fields_are_left_out() -> None:
    job = parse("jobs: [{name: a, run: make}]").jobs[0]

    assert job == JobSpec(name="a", run="make")
    assert (job.timeout_seconds, job.retries, job.when, job.image) == (3600, 0, "on_success", None)


def test_the_workflow_priority_is_every_jobs_and_normal_when_left_out() -> None:
    assert {job.priority for job in parse("jobs: [{name: a, run: x}, {name: b, run: y}]").jobs} == {"normal"}
    prioritised = parse("priority: high\njobs: [{name: a, run: x}, {name: b, run: y}]")
    assert prioritised.priority == "high" and {job.priority for job in prioritised.jobs} == {"high"}


def test_an_unknown_priority_names_its_line_and_the_tiers() -> None:
    error = refused("""\
        jobs: [{name: a, run: x}]
        priority: urgent
    """)

    assert (error.line, error.field) == (2, "priority")
    assert 'expected one of: high, normal, low, got "urgent"' in error.message


@pytest.mark.parametrize(("asked", "cap", "gets"), [
    ("high", "high", "high"), ("high", "normal", "normal"), ("normal", "low", "low"),
    ("low", "high", "low"), ("normal", "normal", "normal"),
])
def test_a_run_gets_the_priority_it_asks_for_never_above_its_tenants_cap(asked, cap, gets) -> None:
    assert capped_priority(asked, cap) == gets


# -- unknown, missing and malformed fields ------------------------------------------------------


def test_unknown_key_names_line_and_field() -> None:
    error = refused(SPEC_EXAMPLE.replace("timeout: 20m", "timout: 20m"))

    assert error.line == 17
    assert error.field == "jobs[1].timout"
    assert str(error).startswith(
        '.ledgerci.yml line 17, field jobs[1].timout: unknown field "timout"'
    )
    assert "(expected one of: name, run, image, env, secrets, timeout, retries," in error.message


def test_unknown_top_level_key_lists_the_top_level_fields() -> None:
    error = refused("""\
        jobs: [{name: a, run: x}]
        job: {}
    """)

    assert (error.line, error.field) == (2, "job")
    assert "expected one of: name, image, env, on, priority, concurrency, jobs" in error.message


def test_unknown_key_inside_on_and_resources_is_refused() -> None:
    assert refused("on: {branch: [main]}\njobs: [{name: a, run: x}]").field == "on.branch"
    assert refused(one_job(resources={"cpu": 1})).field == "jobs[0].resources.cpu"


def test_missing_run_names_the_job_line() -> None:
    error = refused("""\
        jobs:
          - name: a
            run: x
          - name: b
            image: alpine
    """)

    assert (error.line, error.field) == (4, "jobs[1].run")
    assert error.message == "required field is missing"


def test_missing_jobs_is_refused() -> None:
    error = refused("name: x\n")

    assert (error.line, error.field, error.message) == (1, "jobs", "required field is missing")


@pytest.mark.parametrize("script", ["", "   ", "\n\n"])
def test_blank_run_is_refused(script: str) -> None:
    assert refused(one_job(run=script)).field == "jobs[0].run"


def test_wrong_type_names_what_was_expected() -> None:
    error = refused(one_job(retries="two"))

    assert (error.line, error.field) == (3, "jobs[0].retries")
    assert error.message == "expected an integer, got a string"


def test_jobs_that_are_not_a_list_are_refused() -> None:
    error = refused("jobs: {lint: {run: x}}")

    assert (error.field, error.message) == ("jobs", "expected a list, got a mapping")


# -- jobs ---------------------------------------------------------------------------------------


def test_duplicate_job_names_are_refused() -> None:
    error = refused("""\
        jobs:
          - name: test
            run: x
          - name: test
            run: y
    """)

    assert (error.line, error.field) == (4, "jobs[1].name")
    assert "first at line 2" in error.message


@pytest.mark.parametrize("name", ["has space", "", "x" * 65, "ünïcode", "a/b"])
def test_bad_job_name_is_refused(name: str) -> None:
    error = refused(one_job(name=name))

    assert error.field == "jobs[0].name"
    assert "1 to 64 letters, digits" in error.message


def test_job_names_may_use_dots_dashes_and_underscores_up_to_64_chars() -> None:
    name = "Build_1.2-x" + "y" * 53

    assert parse(one_job(name=name)).jobs[0].name == name


@pytest.mark.parametrize("count", [0, 101])
def test_jobs_need_between_1_and_100_entries(count: int) -> None:
    jobs = [{"name": f"j{i}", "run": "true"} for i in range(count)]

    error = refused(yaml.safe_dump({"jobs": jobs}))

    assert error.field == "jobs"
    assert f"expected 1 to 100 jobs, got {count}" in error.message


def test_a_hundred_jobs_are_accepted() -> None:
    jobs = [{"name": f"j{i}", "run": "true"} for i in range(100)]

    assert len(parse_workflow(yaml.safe_dump({"jobs": jobs})).jobs) == 100


@pytest.mark.parametrize(
    ("timeout", "seconds"), [("90s", 90), ("20m", 1200), ("2h", 7200), (45, 45), ("45", 45)]
)
def test_timeout_takes_seconds_minutes_hours_or_a_bare_number(
    timeout: str | int, seconds: int
) -> None:
    assert parse(one_job(timeout=timeout)).jobs[0].timeout_seconds == seconds


@pytest.mark.parametrize("timeout", ["20x", "1.5h", "-1", "", "m", "1h30m", 0, "0s", 1.5, True])
def test_bad_duration_is_refused(timeout: object) -> None:
    error = refused(one_job(timeout=timeout))

    assert (error.line, error.field) == (4, "jobs[0].timeout")


def test_timeout_is_at_most_a_week() -> None:
    assert parse(one_job(timeout="168h")).jobs[0].timeout_seconds == 7 * 24 * 3600
    assert "7 days" in refused(one_job(timeout="169h")).message


@pytest.mark.parametrize("retries", [-1, 11])
def test_retries_are_between_0_and_10(retries: int) -> None:
    assert refused(one_job(retries=retries)).field == "jobs[0].retries"


def test_bad_when_is_refused() -> None:
    error = refused(one_job(when="sometimes"))

    assert error.field == "jobs[0].when"
    assert "expected one of: on_success, on_failure, always" in error.message


@pytest.mark.parametrize("memory", ["512m", "1g", "256k", "1024", 1024, "2G"])
def test_memory_is_kept_as_written(memory: str | int) -> None:
    resources = parse(one_job(resources={"memory": memory})).jobs[0].resources

    assert resources == Resources(memory=str(memory))


@pytest.mark.parametrize("resources", [{"memory": "1x"}, {"memory": "0"}, {"cpus": 0}])
def test_bad_resources_are_refused(resources: dict[str, object]) -> None:
    error = refused(one_job(resources=resources))

    assert error.field == f"jobs[0].resources.{next(iter(resources))}"


@pytest.mark.parametrize("secret", ["1ST", "has-dash", ""])
def test_bad_secret_names_are_refused(secret: str) -> None:
    assert refused(one_job(secrets=["OK", secret])).field == "jobs[0].secrets[1]"


# -- env and image ------------------------------------------------------------------------------


def test_numbers_and_booleans_in_env_become_strings_as_written() -> None:
    job = parse("""\
        jobs:
          - name: a
            run: x
            env: {ONE: 1, YES: true, HALF: 0.5, ZIP: 01234, SIXTY: 1:00}
    """).jobs[0]

    assert job.env == {"ONE": "1", "YES": "true", "HALF": "0.5", "ZIP": "01234", "SIXTY": "1:00"}


def test_job_env_overrides_the_workflow_env() -> None:
    workflow = parse("""\
        env: {A: top, B: top}
        jobs:
          - {name: a, run: x, env: {B: job, C: job}}
          - {name: b, run: x}
    """)

    assert workflow.jobs[0].env == {"A": "top", "B": "job", "C": "job"}
    assert workflow.jobs[1].env == {"A": "top", "B": "top"}


def test_null_or_nested_env_values_are_refused() -> None:
    error = refused("""\
        env:
          A: ok
          B:
        jobs: [{name: a, run: x}]
    """)

    assert (error.line, error.field) == (3, "env.B")


def test_env_names_must_be_variable_names() -> None:
    assert refused(one_job(env={"NOT-A-VAR": "x"})).field == "jobs[0].env.NOT-A-VAR"


def test_job_image_falls_back_to_the_workflow_image() -> None:
    workflow = parse("""\
        image: alpine
        jobs:
          - {name: a, run: x}
          - {name: b, run: x, image: debian}
    """)

    assert [job.image for job in workflow.jobs] == ["alpine", "debian"]


# -- YAML itself --------------------------------------------------------------------------------


def test_on_key_stays_a_string_and_reads_branches() -> None:
    # YAML 1.1 reads a bare `on` as the boolean True; the key must still mean `on`.
    assert parse("on:\n  branches: [main]\njobs: [{name: a, run: x}]").branches == ["main"]


def test_on_may_be_left_out_or_empty() -> None:
    assert parse("jobs: [{name: a, run: x}]").branches is None
    assert parse("on:\njobs: [{name: a, run: x}]").branches is None


def test_empty_branch_list_is_refused() -> None:
    assert refused("on: {branches: []}\njobs: [{name: a, run: x}]").field == "on.branches"


def test_aliases_and_merge_keys_are_allowed() -> None:
    workflow = parse("""\
        jobs:
          - &first
            name: a
            run: &script make test
            image: alpine
            timeout: 5m
          - <<: *first
            name: b
            timeout: 1m
          - name: c
            run: *script
    """)

    assert [(j.name, j.run, j.image, j.timeout_seconds) for j in workflow.jobs] == [
        ("a", "make test", "alpine", 300),
        ("b", "make test", "alpine", 60),
        ("c", "make test", None, 3600),
    ]


def test_merged_unknown_key_names_the_line_where_it_is_written() -> None:
    error = refused("""\
        jobs:
          - &first
            name: a
            run: x
            timout: 5m
          - <<: *first
            name: b
    """)

    assert (error.line, error.field) == (5, "jobs[0].timout")


def test_merge_of_something_other_than_a_mapping_is_refused() -> None:
    error = refused("jobs: [{<<: not-a-mapping, name: a, run: x}]")

    assert (error.line, error.field) == (1, "jobs[0]")
    assert "merge key" in error.message


def test_alias_that_contains_itself_is_refused() -> None:
    error = refused("jobs: &loop [*loop]")

    assert (error.line, error.field) == (1, "jobs[0]")


def test_alias_expansion_bomb_is_refused() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]

    error = refused("\n".join(levels))

    assert "too many values" in error.message


@pytest.mark.parametrize(
    "value",
    ["!custom x", "!!python/object:os.system x", "!!binary aGk=", "!!set {a: null}"],
)
def test_custom_tag_is_refused(value: str) -> None:
    error = refused(f"jobs:\n  - name: a\n    run: {value}\n")

    assert (error.line, error.field) == (3, "jobs[0].run")
    assert "is not allowed" in error.message


def test_standard_tags_are_allowed() -> None:
    job = parse("jobs: [{name: !!str 123, run: !!str true, retries: !!int '2'}]").jobs[0]

    assert (job.name, job.run, job.retries) == ("123", "true", 2)


def test_duplicate_keys_are_refused() -> None:
    error = refused("""\
        jobs:
          - name: a
            run: x
            run: y
    """)

    assert (error.line, error.field) == (4, "jobs[0].run")
    assert "first at line 3" in error.message


def test_yaml_syntax_error_names_its_line() -> None:
    error = refused("""\
        jobs:
          - name: a
            run: [unclosed
          - name: b
    """)

    assert error.line == 4
    assert error.message.startswith("YAML syntax error")


def test_several_documents_are_refused() -> None:
    assert refused("jobs: [{name: a, run: x}]\n---\njobs: []\n").line == 2


@pytest.mark.parametrize("text", ["", "# only a comment\n", "~\n"])
def test_empty_file_is_refused(text: str) -> None:
    assert "empty" in refused(text).message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_file_that_is_not_a_mapping_is_refused(text: str) -> None:
    assert "expected a mapping at the top level" in refused(text).message


def test_size_limit_is_256_kib() -> None:
    padding = "#" * 100 + "\n"
    body = "jobs: [{name: a, run: x}]\n"
    fits = body + padding * ((MAX_WORKFLOW_BYTES - len(body)) // len(padding))

    assert parse_workflow(fits).jobs[0].name == "a"
    assert "over the limit" in refused(fits + "#" * MAX_WORKFLOW_BYTES).message
    assert "over the limit" in refused((body + "#" * MAX_WORKFLOW_BYTES).encode()).message


def test_non_utf8_bytes_are_refused_with_their_line() -> None:
    error = refused(b"jobs:\n  - name: caf\xe9\n    run: x\n")

    assert (error.line, error.message) == (2, "the file is not valid UTF-8")


def test_control_characters_are_refused_with_their_line() -> None:
    assert refused("jobs:\n  - name: a\x07\n").line == 2


# -- ref filters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("branches", "ref", "expected"),
    [
        (None, "refs/heads/main", True),
        (["main"], None, True),
        (["main"], "", True),
        (["main"], "refs/heads/main", True),
        (["main"], "main", True),
        (["main"], "refs/heads/develop", False),
        (["release/*"], "refs/heads/release/1.2", True),
        (["release/*"], "refs/heads/release/1.2/hotfix", False),
        (["release/**"], "refs/heads/release/1.2/hotfix", True),
        (["*"], "refs/heads/feature/x", False),
        (["**"], "refs/heads/feature/x", True),
        (["v?"], "refs/heads/v1", True),
        (["refs/heads/*"], "refs/heads/main", True),
        (["v*"], "refs/tags/v1.0", False),
        (["*"], "refs/tags/v1.0", False),
        (["refs/tags/v*"], "refs/tags/v1.0", True),
        (["release.1"], "refs/heads/releasex1", False),
        (["main", "release/*"], "refs/heads/release/2", True),
        ([], "refs/heads/main", False),
    ],
)
def test_ref_matches_branch_globs(
    branches: list[str] | None, ref: str | None, expected: bool
) -> None:
    assert ref_matches(branches, ref) is expected


# -- round trip ---------------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
scripts = st.text(
    alphabet=st.sampled_from([chr(c) for c in range(32, 127)] + ["\n"]), min_size=1, max_size=80
).filter(str.strip)
var_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
env_values = st.one_of(scripts, st.integers(-(10**6), 10**6), st.booleans())
durations = st.one_of(
    st.integers(1, 86_400).map(lambda n: (n, n)),
    st.integers(1, 86_400).map(lambda n: (f"{n}s", n)),
    st.integers(1, 1440).map(lambda n: (f"{n}m", n * 60)),
    st.integers(1, 168).map(lambda n: (f"{n}h", n * 3600)),
)
jobs = st.fixed_dictionaries(
    {"name": names, "run": scripts, "timeout": durations},
    optional={"image": names, "env": st.dictionaries(var_names, env_values, max_size=4)},
)


def as_env_text(value: str | int | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@settings(max_examples=60, deadline=None, database=None)
@given(
    jobs=st.lists(jobs, min_size=1, max_size=6, unique_by=lambda job: job["name"]),
    image=st.none() | names,
)
def test_valid_workflows_round_trip_through_yaml(jobs: list[dict], image: str | None) -> None:
    document = {
        "jobs": [{**job, "timeout": job["timeout"][0]} for job in jobs],
        **({"image": image} if image else {}),
    }

    workflow = parse_workflow(yaml.safe_dump(document))

    assert [j.name for j in workflow.jobs] == [job["name"] for job in jobs]
    assert [j.run for j in workflow.jobs] == [job["run"] for job in jobs]
    assert [j.timeout_seconds for j in workflow.jobs] == [job["timeout"][1] for job in jobs]
    assert [j.image for j in workflow.jobs] == [job.get("image", image) for job in jobs]
    assert [j.env for j in workflow.jobs] == [
        {k: as_env_text(v) for k, v in job.get("env", {}).items()} for job in jobs
    ]


@pytest.mark.parametrize("resources", ["{cpus: .inf}", "{cpus: .nan}", "{cpus: 1e400}", "{cpus: 2000}",
                                       "{memory: 2000g}", "{memory: 999999999999999999}"])
def test_resources_beyond_any_machine_are_refused_with_their_line(resources: str) -> None:
    text = f"jobs:\n  - name: a\n    run: x\n    resources: {resources}\n"
    with pytest.raises(InvalidWorkflowError) as refused:
        parse_workflow(text.encode())
    assert refused.value.line == 4
    assert refused.value.field.startswith("jobs[0].resources") or "resources" in str(refused.value)
