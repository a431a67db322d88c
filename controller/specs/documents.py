"""Reads spec files into plain documents that remember where each field was.

The first step of loading (files -> documents -> validated objects): YAML is
composed into nodes so that every field keeps its line number, which is what
lets each error name FILE:LINE: FIELD. No validation happens here beyond YAML
syntax, duplicate keys and the limits below.

The limits exist because spec files are read by a daemon running as root, and
a careless or hostile file must cost one error line, never the host's memory,
minutes of CPU or a traceback. Pure-Python PyYAML reads some 40,000 values a
second, so a file past MAX_FILE_BYTES is refused unread and reading stops past
MAX_VALUES. Aliases share one node many times over (a 600-byte "billion
laughs" expands to 10^9 values), so aliases and `<<` merge keys are expanded
here, counting as they go: past MAX_VALUES the expansion stops at its alias,
and an alias inside the node it names is refused before it loops. PyYAML
composes recursively, so nesting past MAX_DEPTH is refused before the stack
runs out. Anything else the YAML library raises still ends as one SpecError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from ..base.errors import SpecError

MAX_FILE_BYTES = 1 << 20  # real specs are a few KiB
MAX_DEPTH = 64  # levels of nesting, also after expanding aliases (a spec uses 4 or 5)
MAX_VALUES = 20_000  # per file, also after expanding aliases: some 1,500 VMs, and read in under a second

FieldPath = tuple[str | int, ...]
_Where = tuple[int, FieldPath]  # line and field an error points at
_MERGE, _VALUE, _STR = (f"tag:yaml.org,2002:{t}" for t in ("merge", "value", "str"))


@dataclass(frozen=True)
class Document:
    file: Path
    line: int
    body: Any
    lines: dict[FieldPath, int] = field(repr=False)

    def line_of(self, path: FieldPath) -> int:
        """Line of the deepest known field along `path` (a missing field points at its parent)."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return self.line


def spec_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def read_documents(path: Path, shown: str) -> tuple[list[Document], list[SpecError]]:
    """The documents of one file; reading stops at the first problem, which is the one error returned."""
    try:
        text = _read(path)
    except _Refused as e:
        return [], [SpecError(shown, e.line, e.field, e.message)]
    except (OSError, UnicodeDecodeError) as e:
        return [], [SpecError(shown, 1, "", f"cannot read: {e}")]
    docs: list[Document] = []
    loader: _Composer | None = None
    try:
        loader = _Composer(text)
        expander = _Expander()
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            lines: dict[FieldPath, int] = {}
            body = expander.value(node, (), lines, 1, None)
            if body is not None:
                docs.append(Document(path, node.start_mark.line + 1, body, lines))
    except _Refused as e:
        return docs, [SpecError(shown, e.line, e.field, e.message)]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = min(mark.line + 1, max(1, len(text.splitlines()))) if mark else 1
        return docs, [SpecError(shown, line, "", f"invalid YAML: {e.problem or e.context}")]
    except yaml.YAMLError as e:  # a ReaderError: a character YAML does not allow, at `position`
        line = text.count("\n", 0, getattr(e, "position", 0)) + 1
        return docs, [SpecError(shown, line, "", f"invalid YAML: {_first_line(e)}")]
    except Exception as e:  # the last resort (RecursionError, MemoryError, a PyYAML bug): still one line
        line = loader.line + 1 if loader else 1
        return docs, [SpecError(shown, line, "", f"cannot read: {type(e).__name__}: {_first_line(e)}")]
    return docs, []


def _first_line(e: Exception) -> str:
    return str(e).partition("\n")[0]


class _Refused(Exception):
    def __init__(self, line: int, field: str, message: str) -> None:
        self.line, self.field, self.message = line, field, message


def _read(path: Path) -> str:
    """The file's text, refused by its size before reading (and read no further, should it grow meanwhile)."""
    with path.open("rb") as f:
        small = os.fstat(f.fileno()).st_size <= MAX_FILE_BYTES
        data = f.read(MAX_FILE_BYTES + 1) if small else b""
    if not small or len(data) > MAX_FILE_BYTES:
        raise _Refused(1, "", f"larger than {MAX_FILE_BYTES} bytes, the limit for a spec file")
    return data.decode()


class _Alias(yaml.Node):
    """An alias as written: where it is (for errors) and the node it names (shared with the anchor)."""

    def __init__(self, target: yaml.Node, mark: yaml.Mark) -> None:
        super().__init__(target.tag, None, mark, mark)
        self.target = target


def _target(node: yaml.Node) -> yaml.Node:
    return node.target if isinstance(node, _Alias) else node


class _Composer(yaml.SafeLoader):
    """PyYAML's composer, but counting values, refusing nesting before its recursion can overflow, and keeping
    each alias's place."""

    depth = nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        alias = self.check_event(yaml.AliasEvent)
        mark: yaml.Mark = self.current_event.start_mark  # of the event check_event just peeked at
        self.nodes += 1
        if self.nodes > MAX_VALUES:
            raise _Refused(mark.line + 1, "", f"more than {MAX_VALUES} values, the limit for a spec file")
        if alias:
            target = super().compose_node(parent, index)
            return None if target is None else _Alias(target, mark)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(mark.line + 1, "", f"nested deeper than {MAX_DEPTH} levels")
        node = super().compose_node(parent, index)
        self.depth -= 1
        return node


class _Expander:
    """Turns composed nodes into Python values, expanding aliases and merge keys within MAX_VALUES and MAX_DEPTH.

    `where` is the line and field of the outermost alias (or merge) being expanded: errors about expansion point
    there, for the place the file was written wrong is the alias, not the anchor.
    """

    def __init__(self) -> None:
        self.ctor = yaml.SafeLoader("")
        self.values = 0  # in this file so far, an alias counting its values each time it expands
        self.open: set[yaml.Node] = set()  # nodes being expanded: meeting one again is an alias inside itself

    def value(self, node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int], depth: int,
              where: _Where | None) -> Any:
        written = node.start_mark.line + 1
        if isinstance(node, _Alias):
            node, where = node.target, where or (written, path)
        self.count(1, depth, where or (written, path))
        if node in self.open:
            raise _Refused(written, dotted(path), "recursive alias: it is inside the node it names")
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        self.open.add(node)
        out: Any
        if isinstance(node, yaml.SequenceNode):
            out = [self.value(item, path + (i,), lines, depth + 1, where) for i, item in enumerate(node.value)]
        else:
            out = {}
            for key_node, value_node in self.pairs(node, path, depth, where):
                line = key_node.start_mark.line + 1
                if not isinstance(_target(key_node), yaml.ScalarNode):
                    raise _Refused(line, dotted(path), "keys must be plain scalars, not a mapping or a list")
                key = self.scalar(_target(key_node), path)
                at = path + (str(key),)
                if key in out:
                    raise _Refused(line, dotted(at), "duplicate key")
                out[key] = self.value(value_node, at, lines, depth + 1, where)
                lines[at] = line
        self.open.discard(node)
        return out

    def scalar(self, node: yaml.Node, path: FieldPath) -> Any:
        try:
            return self.ctor.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except Exception:  # PyYAML's constructors crash on some explicitly tagged values (`!!int x`, `!!float`)
            tag = node.tag.removeprefix("tag:yaml.org,2002:")
            raise _Refused(node.start_mark.line + 1, dotted(path), f"not a valid !!{tag}") from None

    def pairs(self, node: yaml.Node, path: FieldPath, depth: int,
              where: _Where | None) -> list[tuple[yaml.Node, yaml.Node]]:
        """Key/value pairs with `<<` merge keys resolved as PyYAML's flatten_mapping does (merged pairs first,
        so a key both merged and written is a duplicate); a merge counts as nesting, each merged pair as a value."""
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        own: list[tuple[yaml.Node, yaml.Node]] = []
        for key, value in node.value:
            if key.tag == _VALUE:
                key.tag = _STR
            if key.tag != _MERGE:
                own.append((key, value))
                continue
            listed = isinstance(_target(value), yaml.SequenceNode)
            for source in reversed(_target(value).value) if listed else [value]:
                target, here = _target(source), where or (source.start_mark.line + 1, path)
                if isinstance(target, (yaml.ScalarNode, yaml.SequenceNode)):
                    expected = "a mapping" if listed else "a mapping or list of mappings"
                    raise ConstructorError("while constructing a mapping", node.start_mark,
                                           f"expected {expected} for merging, but found {target.id}", source.start_mark)
                if target in self.open:
                    raise _Refused(source.start_mark.line + 1, dotted(path), "recursive alias in a merge key")
                self.count(1, depth + 1, here)  # before going down: a chain of merges is nesting too
                self.open.add(target)
                sub = self.pairs(target, path, depth + 1, here)
                self.open.discard(target)
                self.count(len(sub), depth + 1, here)
                merged += sub
        return merged + own

    def count(self, values: int, depth: int, where: _Where) -> None:
        self.values += values
        if self.values > MAX_VALUES:
            raise _Refused(where[0], dotted(where[1]), f"more than {MAX_VALUES} values after expanding aliases")
        if depth > MAX_DEPTH:
            raise _Refused(where[0], dotted(where[1]), f"nested deeper than {MAX_DEPTH} levels after expanding aliases")


def dotted(path: FieldPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if part.isprintable() else repr(part)  # a key holding a newline must not break the line
            out += f".{name}" if out else name
    return out
