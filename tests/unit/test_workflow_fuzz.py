"""The workflow parser under hostile input: whatever bytes a repository holds in `.ledgerci.yml`,
`parse_workflow` returns a Workflow or raises InvalidWorkflowError naming a line of the file, never
anything else, and refuses expansion bombs and oversized files at once."""

from __future__ import annotations

import re
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.errors import InvalidWorkflowError
from domain.workflow import MAX_WORKFLOW_BYTES, Workflow, parse_workflow
from domain.yaml_lines import MAX_DEPTH

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# What YAML counts as a line break (libyaml's marks count these, not only "\n").
_YAML_LINE_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")


def yaml_lines(data: str | bytes) -> int:
    """How many lines the file has, as YAML counts them; a final line break starts no line."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    breaks = [match.end() for match in _YAML_LINE_BREAK.finditer(text)]
    return len(breaks) + (0 if breaks and breaks[-1] == len(text) else 1)


def parses_or_names_a_line(data: str | bytes) -> Workflow | InvalidWorkflowError:
    """The property: a Workflow, or an InvalidWorkflowError whose message names a line of the file."""
    try:
        workflow = parse_workflow(data)
    except InvalidWorkflowError as error:
        assert error.line is not None, f"no line in {error}"
        assert 1 <= error.line <= yaml_lines(data), (error.line, yaml_lines(data), str(error))
        assert str(error).startswith(f".ledgerci.yml line {error.line}"), str(error)
        return error
    assert isinstance(workflow, Workflow)
    return workflow


# -- fragments of the real schema and of YAML's syntax -------------------------------------------

KEYS = ["name", "image", "env", "on", "branches", "jobs", "run", "timeout", "retries", "resources",
        "cpus", "memory", "when", "allow_failure", "secrets", "PATH", "A_VAR", "timout", "<<", "? x", "1", "~",
        "'on'", '"jobs"', "&k name", "*k", "!!str jobs", "[a]", "{a: 1}", ""]
SCALARS = [
    "a", "x", "build", "echo hi", "make -j4", "true", "false", "no", "yes", "on", "off", "~", "null", "",
    "0", "-1", "3", "11", "010", "0o17", "0x1F", "0b101", "1_000", "1:30", "1e999", "-.inf", ".inf", ".nan",
    "1.5", "0.0", "20m", "90s", "2h", "0s", "8d", "512m", "1g", "256k", "0g", "always", "on_success",
    "on_failure", "never", "main", "release/*", "**", "2001-12-14", "2001-12-14t21:59:43.10-05:00",
    "'single'", "'it''s'", '"double \\t \\u263a \\x41"', '"\\0"', '"\\ud800"', '"\\U0001F600"', '"\\e"',
    "|", "|-", ">", ">+", "|2", "!!str 1", "!!int 7", "!!int x", "!!float x", "!!bool maybe", "!!null",
    "!!timestamp 2001-99-99", "!!binary aGk=", "!!python/object:os.system x", "!!python/name:os.system ''",
    "!!python/object/apply:os.system [id]", "!custom x", "!<tag:yaml.org,2002:str> x", "!!set {a}",
    "!!omap [a: 1]", "!!pairs [a: 1]", "!!seq [a]", "!!map {a: 1}", "&a x", "*a", "&b {name: a, run: x}",
    "*b", "&c [1, 2]", "*c", "*undefined", "[a, b]", "[{name: a, run: x}]", "{a: 1}", "{name: a, run: x}",
    "{<<: *b}", "[*a, *a, *a]", "[", "]", "{", "}", ",", ":", "'", '"', "`", "@", "%", "|a", "-", "- -",
    "? a", "#c", "x #c", "\t", "\tx", " ", "😀", "名前", "\u2028", "\u2029", "\ufeff", "\x85", "\x00", "\x07",
    "\x1b[31m", "\ud800", "\r", "\\", "x" * 3000, "9" * 5000, "9" * 5000 + "s", "'" + "9" * 5000 + "'",
]
SYNTAX_LINES = [
    "---", "...", "--- |", "%YAML 1.1", "%YAML 1.2", "%YAML 9.9", "%TAG ! tag:yaml.org,2002:", "%FOO bar",
    "<<: *a", "<<: *b", "<<: [*b, *b]", "<<: {run: y}", "<<: 1", "? [a, b]", ": c", "? |", "- ", "-",
    "- - - x", "&a a: &b b", "*a : x", "!!map", "!!python/object:__main__.X {}", "{", "}", "[", "]", "\t-",
]
indents = st.sampled_from(["", "", " ", "  ", "    ", "      ", "\t", "  \t", " " * 40])
keys = st.sampled_from(KEYS) | st.text(max_size=8)
scalars = st.sampled_from(SCALARS) | st.text(max_size=20)
lines = st.one_of(
    st.builds("{}{}: {}".format, indents, keys, scalars),
    st.builds("{}- {}".format, indents, scalars),
    st.builds("{}- {}: {}".format, indents, keys, scalars),
    st.builds("{}{}".format, indents, st.sampled_from(SYNTAX_LINES)),
    st.builds("{}{}".format, indents, scalars),
)
line_ends = st.sampled_from(["\n", "\n", "\n", "\r\n", "\r", "\u2028", "\x85"])
yamlish = st.builds(lambda ls, end: end.join(ls), st.lists(lines, max_size=40), line_ends)

VALID = textwrap.dedent("""\
    name: build
    image: python:3.12-slim
    env: {A: "1", B: 2}
    on:
      branches: [main, "release/*"]
    jobs:
      - name: lint
        run: ruff check .
      - &test
        name: test
        run: |
          pytest -q
        timeout: 20m
        retries: 1
        resources: {cpus: 1.5, memory: 1g}
        secrets: [TOKEN]
      - <<: *test
        name: notify
        when: always
        allow_failure: true
    """).splitlines()


@st.composite
def mutated_valid(draw: st.DrawFn) -> str:
    """The valid example with lines replaced, inserted or cut: failures deep in validation."""
    document = list(VALID)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(document)))
        action = draw(st.sampled_from(["insert", "replace", "cut", "append"]))
        if action == "cut" and at < len(document):
            document[at] = document[at][: draw(st.integers(0, len(document[at])))]
        elif action == "replace" and at < len(document):
            indent = len(document[at]) - len(document[at].lstrip())
            document[at] = " " * indent + draw(lines).lstrip(" \t")
        elif action == "append" and at < len(document):
            document[at] += draw(scalars)
        else:
            document.insert(at, draw(lines))
    return "\n".join(document) + draw(st.sampled_from(["", "\n"]))


@st.composite
def deep(draw: st.DrawFn) -> str:
    """Nesting far past anything legitimate, in flow or block style, closed or not."""
    depth = draw(st.integers(1, 1500))
    style = draw(st.sampled_from(["seq", "map", "block-seq", "block-map", "mixed"]))
    if style == "seq":
        text = "[" * depth + "]" * draw(st.integers(0, depth))
    elif style == "map":
        text = "{a: " * depth + "1" + "}" * draw(st.integers(0, depth))
    elif style == "block-seq":
        text = "".join(" " * i + "-\n" for i in range(min(depth, 300)))
    elif style == "block-map":
        text = "".join(" " * i + f"k{i}:\n" for i in range(min(depth, 300)))
    else:
        text = "".join("[{a: " if i % 2 else "{b: [" for i in range(depth))
    return draw(st.sampled_from(["jobs: ", "env: ", "", "- "])) + text


# -- the properties -------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=4000))
def test_random_bytes_parse_or_name_a_line(data: bytes) -> None:
    parses_or_names_a_line(data)


@FUZZ
@given(text=yamlish)
def test_yaml_made_of_schema_keys_and_syntax_parses_or_names_a_line(text: str) -> None:
    parses_or_names_a_line(text)
    parses_or_names_a_line(text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(text=mutated_valid())
def test_the_valid_example_mutated_parses_or_names_a_line(text: str) -> None:
    parses_or_names_a_line(text)


@settings(max_examples=150, deadline=None, database=None)
@given(text=deep())
def test_deep_nesting_is_refused_with_a_line(text: str) -> None:
    outcome = parses_or_names_a_line(text)
    assert isinstance(outcome, InvalidWorkflowError)


def test_the_unmutated_example_is_valid() -> None:
    """Guards the fuzz above: it mutates a document that parses."""
    workflow = parse_workflow("\n".join(VALID))
    assert [job.name for job in workflow.jobs] == ["lint", "test", "notify"]
    assert workflow.jobs[2].timeout_seconds == 20 * 60  # merged from the `test` job


# -- what the fuzzing found, kept as regressions ---------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("timeout", "9" * 5000 + "s"), ("resources", "{memory: '" + "9" * 5000 + "'}")],
)
def test_a_number_with_thousands_of_digits_is_an_invalid_workflow(field: str, value: str) -> None:
    # int() of over 4300 digits raised ValueError out of the parser.
    error = parses_or_names_a_line(f"jobs: [{{name: a, run: x, {field}: {value}}}]")

    assert isinstance(error, InvalidWorkflowError)
    assert error.field is not None and error.field.startswith(f"jobs[0].{field}")


@pytest.mark.parametrize(
    "text",
    [
        "jobs: " + "{a: " * 600 + "1" + "}" * 600,  # flow mappings under libyaml's own 1000 levels
        "".join("  " * i + "-\n" for i in range(400)),  # a block sequence 400 deep
    ],
)
def test_nesting_past_the_limit_names_its_line(text: str) -> None:
    # It was "the document nests too deeply", from a RecursionError, with no line.
    error = parses_or_names_a_line(text)

    assert isinstance(error, InvalidWorkflowError)
    assert f"deeper than {MAX_DEPTH} levels" in error.message


def test_a_lone_surrogate_in_text_is_an_invalid_workflow() -> None:
    # libyaml encodes the text to UTF-8 first: this raised UnicodeEncodeError out of the parser.
    error = parses_or_names_a_line("jobs:\n  - name: a\ud800\n    run: x\n")

    assert isinstance(error, InvalidWorkflowError) and error.line == 2


def test_a_control_character_after_wide_characters_names_its_own_line() -> None:
    # libyaml reports the position in bytes; counted as characters it named line 5 here.
    error = parses_or_names_a_line("name: 😀😀😀😀😀😀😀😀😀😀\nimage: \x1f\njobs: []\nenv: {}\non: {}\n")

    assert isinstance(error, InvalidWorkflowError) and error.line == 2


@pytest.mark.parametrize("text", ["jobs: [{name: a, run: x}", " name: a\n ---", "jobs: {b: ["])
def test_a_syntax_error_at_the_end_names_the_last_line(text: str) -> None:
    # libyaml marks the end of the stream on a line after the last one.
    error = parses_or_names_a_line(text)

    assert isinstance(error, InvalidWorkflowError) and error.line == text.count("\n") + 1


def refused_quickly(text: str | bytes) -> InvalidWorkflowError:
    # CPU time of this process, not wall time: other processes on a busy machine do not count.
    # An unguarded bomb takes seconds to minutes of CPU; a refused one, milliseconds.
    started = time.process_time()
    with pytest.raises(InvalidWorkflowError) as caught:
        parse_workflow(text)
    elapsed = time.process_time() - started
    assert elapsed < 1.0, f"took {elapsed:.2f}s of CPU: the work grows with the expansion, not the file"
    return caught.value


def test_alias_bomb_is_refused_at_once() -> None:
    # "Billion laughs": 9 levels of 10 aliases each, 10**9 values from under 1 KiB.
    levels = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    text = "\n".join(levels) + "\njobs: [{name: a, run: x}]\n"
    assert len(text) < 1024

    error = refused_quickly(text)

    assert "too many values" in error.message and error.line is not None


def test_merge_key_bomb_is_refused_at_once() -> None:
    # Merges of merges: each level merges the one before ten times. Before merge expansions were
    # counted, these 8 levels (under 500 bytes) took 12 s, and each level more ten times longer.
    levels = ["m0: &m0 {k: 1}"]
    levels += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}" for i in range(1, 8)]
    text = "\n".join(levels) + "\njobs: [{name: a, run: x}]\n"

    error = refused_quickly(text)

    assert "too many values" in error.message and error.line is not None


@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_file_over_the_size_limit_is_refused_at_once(as_bytes: bool) -> None:
    # Over the limit by any measure, and made of what is costly to parse were it read at all.
    bomb = "a: &a [" + ", ".join(["x"] * 10) + "]\n" + "b: [" + ", ".join(["*a"] * 100_000) + "]\n"
    text = bomb + "#" * MAX_WORKFLOW_BYTES
    assert len(text.encode()) > MAX_WORKFLOW_BYTES

    error = refused_quickly(text.encode() if as_bytes else text)

    assert "over the limit" in error.message
