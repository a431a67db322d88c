"""Reads spec files into plain documents that remember where each field was.

The first step of loading (files -> documents -> validated objects): YAML is
composed into nodes so that every field keeps its line number, which is what
lets each error name FILE:LINE: FIELD. No validation happens here beyond YAML
syntax and duplicate keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import SpecError

FieldPath = tuple[str | int, ...]


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
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        return [], [SpecError(shown, 1, "", f"cannot read: {e}")]
    constructor = yaml.SafeLoader("")
    docs: list[Document] = []
    try:
        for node in yaml.compose_all(text, Loader=yaml.SafeLoader):
            if node is None:
                continue
            lines: dict[FieldPath, int] = {}
            body = _to_python(node, (), lines, constructor)
            if body is not None:
                docs.append(Document(path, node.start_mark.line + 1, body, lines))
    except _DuplicateKey as e:
        return docs, [SpecError(shown, e.line, e.field, "duplicate key")]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = min(mark.line + 1, max(1, len(text.splitlines()))) if mark else 1
        return docs, [SpecError(shown, line, "", f"invalid YAML: {e.problem or e.context}")]
    except yaml.YAMLError as e:
        return docs, [SpecError(shown, 1, "", f"invalid YAML: {e}")]
    return docs, []


class _DuplicateKey(Exception):
    def __init__(self, line: int, field: str) -> None:
        self.line, self.field = line, field


def _to_python(node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int], ctor: yaml.SafeLoader) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        ctor.flatten_mapping(node)  # resolves `<<` merge keys
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = ctor.construct_object(key_node, deep=True)
            if key in out:
                raise _DuplicateKey(key_node.start_mark.line + 1, dotted(path + (str(key),)))
            out[key] = _to_python(value_node, path + (str(key),), lines, ctor)
            lines[path + (str(key),)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, path + (i,), lines, ctor) for i, item in enumerate(node.value)]
    return ctor.construct_object(node, deep=True)


def dotted(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
