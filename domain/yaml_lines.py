"""Compose YAML into plain Python data, remembering the line of every key and item.

PyYAML's loaders throw positions away, but an error in a workflow file must name its line. So
we compose (nodes keep their marks) and build the data ourselves, which also lets us refuse
what a safe loader would accept silently: duplicate keys, custom tags, alias cycles and bombs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from domain.errors import InvalidWorkflowError

Path = tuple[str | int, ...]

_STD = "tag:yaml.org,2002:"
_MERGE = _STD + "merge"
# Timestamps stay text: no field is a date, and `name: 2024-01-01` should not become one.
_SCALAR_TAGS = frozenset(_STD + t for t in ("str", "int", "float", "bool", "null", "timestamp"))
# Aliases let a 256 KiB file expand to billions of values; nothing legitimate needs this many.
MAX_VALUES = 100_000
# A workflow nests 4 levels (jobs[0].resources.cpus); deeper than this is refused with its line,
# well before Python's recursion limit would end the build without one.
MAX_DEPTH = 100
# libyaml composes a 256 KiB file ten times faster, and caps nesting at 1000 levels itself.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Located:
    data: Any
    lines: dict[Path, int]  # 1-based line of each mapping key, sequence item, and the root
    texts: dict[Path, str]  # each scalar as written, for values that must not be reinterpreted

    def line_of(self, path: Path) -> int | None:
        """The line of `path`, or of its nearest ancestor when it is absent (a missing field)."""
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path)


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else part
    return out


def compose_with_lines(text: str) -> Located:
    """Plain data (dict, list, str, int, float, bool, None) from one YAML document."""
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        detail = f"{e.problem} ({e.context})" if e.context and e.problem else e.problem or e.context
        # At the end of the stream libyaml's mark can be a line past the file's last one.
        raise InvalidWorkflowError(
            f"YAML syntax error: {detail}", line=min(mark.line + 1, _last_line(text)) if mark else None
        ) from None
    except yaml.reader.ReaderError as e:
        # libyaml's position counts bytes of the UTF-8 text; PyYAML's own reader counts characters.
        utf8 = _LOADER is not yaml.SafeLoader
        before = text.encode()[: e.position].decode(errors="ignore") if utf8 else text[: e.position]
        line = len(_LINE_BREAK.findall(before)) + 1
        raise InvalidWorkflowError(
            f"YAML syntax error: character {e.character!r} is not allowed", line=line
        ) from None
    except UnicodeEncodeError as e:  # a str with a lone surrogate, which libyaml cannot read
        line = len(_LINE_BREAK.findall(text[: e.start])) + 1
        raise InvalidWorkflowError(
            f"YAML syntax error: character {text[e.start]!r} is not allowed", line=line
        ) from None
    except yaml.YAMLError as e:
        raise InvalidWorkflowError(f"YAML syntax error: {e}") from None
    except RecursionError:
        raise InvalidWorkflowError("YAML syntax error: the document nests too deeply") from None
    if root is None:
        return Located(None, {}, {})
    builder = _Builder()
    builder.lines[()] = root.start_mark.line + 1
    try:
        data = builder.build(root, ())
    except RecursionError:
        raise InvalidWorkflowError("the document nests too deeply") from None
    return Located(data, builder.lines, builder.texts)


_LINE_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")  # what YAML counts as one


def _last_line(text: str) -> int:
    """The number of the file's last line: a final line break ends a line, it starts none."""
    breaks = [m.end() for m in _LINE_BREAK.finditer(text)]
    return len(breaks) + (0 if breaks and breaks[-1] == len(text) else 1)


def _fail(message: str, node: Node, path: Path) -> InvalidWorkflowError:
    return InvalidWorkflowError(message, line=node.start_mark.line + 1, field=format_path(path))


def _shown(tag: str) -> str:
    return "!!" + tag.removeprefix(_STD) if tag.startswith(_STD) else tag


class _Builder:
    def __init__(self) -> None:
        self.lines: dict[Path, int] = {}
        self.texts: dict[Path, str] = {}
        self._count = 0
        # Nodes being built right now: meeting one again means an alias contains itself.
        self._open: set[int] = set()
        self._constructor = yaml.constructor.SafeConstructor()

    def build(self, node: Node, path: Path) -> Any:
        self._tally(1, node, path)
        if len(path) > MAX_DEPTH:
            raise _fail(f"the document nests deeper than {MAX_DEPTH} levels", node, path)
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._open:
            raise _fail("an alias refers to a value that contains it", node, path)
        self._open.add(id(node))
        try:
            if isinstance(node, SequenceNode) and node.tag == _STD + "seq":
                return [self._item(child, (*path, i)) for i, child in enumerate(node.value)]
            if isinstance(node, MappingNode) and node.tag == _STD + "map":
                return self._mapping(node, path)
            raise _fail(f"YAML tag {_shown(node.tag)} is not allowed", node, path)
        finally:
            self._open.discard(id(node))

    def _tally(self, values: int, node: Node, path: Path) -> None:
        self._count += values
        if self._count > MAX_VALUES:
            raise _fail(
                f"too many values (over {MAX_VALUES}, counting alias expansions)", node, path
            )

    def _item(self, node: Node, path: Path) -> Any:
        self.lines[path] = node.start_mark.line + 1
        return self.build(node, path)

    def _scalar(self, node: ScalarNode, path: Path) -> Any:
        if node.tag not in _SCALAR_TAGS:
            raise _fail(f"YAML tag {_shown(node.tag)} is not allowed", node, path)
        self.texts[path] = node.value
        kind = node.tag.removeprefix(_STD)
        if kind in ("str", "timestamp"):
            return node.value
        construct = getattr(self._constructor, f"construct_yaml_{kind}")
        try:
            return construct(node)
        except (ValueError, KeyError, IndexError):
            raise _fail(f"{node.value!r} is not a valid {kind}", node, path) from None

    def _mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        winners: dict[str, tuple[ScalarNode, Node]] = {}
        for key_node, value_node in self._pairs(node, path, frozenset()):
            winners[key_node.value] = (key_node, value_node)
        result: dict[str, Any] = {}
        for key, (key_node, value_node) in winners.items():
            self.lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, (*path, key))
        return result

    def _pairs(
        self, node: MappingNode, path: Path, merging: frozenset[int]
    ) -> list[tuple[ScalarNode, Node]]:
        """Key/value nodes with `<<` merges expanded; later pairs override earlier ones."""
        merged: list[tuple[ScalarNode, Node]] = []
        explicit: list[tuple[ScalarNode, Node]] = []
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged += self._merged(value_node, path, merging | {id(node)})
                continue
            # Keys come from the raw text: YAML 1.1 would turn `on:` into the boolean True.
            if not isinstance(key_node, ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                raise _fail("mapping keys must be plain scalars", key_node, path)
            key = key_node.value
            if key in first_line:
                raise _fail(
                    f'duplicate key "{key}" (first at line {first_line[key]})',
                    key_node,
                    (*path, key),
                )
            first_line[key] = key_node.start_mark.line + 1
            explicit.append((key_node, value_node))
        return merged + explicit

    def _merged(
        self, value: Node, path: Path, merging: frozenset[int]
    ) -> list[tuple[ScalarNode, Node]]:
        # In `<<: [*a, *b]` the first source wins, so the sources are applied last to first.
        sources = value.value if isinstance(value, SequenceNode) else [value]
        pairs: list[tuple[ScalarNode, Node]] = []
        for source in reversed(sources):
            if not isinstance(source, MappingNode) or source.tag != _STD + "map":
                raise _fail("a merge key (<<) takes a mapping or a list of mappings", value, path)
            if id(source) in merging:
                raise _fail("a merge key (<<) refers to a mapping that contains it", value, path)
            # Merges of merges multiply pairs as aliases multiply values: count them too.
            self._tally(len(source.value), value, path)
            pairs += self._pairs(source, path, merging)
        return pairs
