"""Hostile or careless spec files: each is one FILE:LINE error, fast, in little memory, never a traceback.

Spec files are read by a root daemon, so an alias bomb, deep nesting, an alias
inside itself, a complex key or a huge file must not cost it memory, minutes
or a crash. Time is measured untraced; memory is the peak tracemalloc sees
(in a second read, as tracing slows reading several times over).
"""

from __future__ import annotations

import os
import random
import re
import time
import tracemalloc
from pathlib import Path

import pytest

import controller.specs.documents as documents
from controller.disks.observe import ImageFiles
from controller.specs.documents import MAX_DEPTH, MAX_FILE_BYTES, MAX_VALUES, read_documents
from controller.specs.load import load

from .support.cli import network_spec, warmvm, write

SECONDS = 2.0  # each measures well under half a second; the rest is room for a busy machine
MEGABYTES = 50  # each peaks under 20 MB; the bomb took 1.3 GB before the limits

BILLION_LAUGHS = 'lol0: &lol0 "lol"\n' + "".join(
    f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]\n" for i in range(1, 10))
# each mapping merges the one before twice: 2^40 pairs, all built before any duplicate key could be seen
MERGE_BOMB = "x: {<<: [&m0 {a: 1, b: 2}, " + ", ".join(f"&m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}" for i in range(1, 41)) + "]}\n"
HUGE_AFTER_EXPANSION = "a: &a [" + ", ".join(["x"] * 1000) + "]\nb: [" + ", ".join(["*a"] * 1000) + "]\n"


def refused(tmp_path: Path, text: str, name: str = "bad.yaml") -> tuple[str, float]:
    """The one error for `text`, checked to be a single FILE:LINE: line, and the seconds reading took."""
    path = tmp_path / name
    path.write_text(text)
    start = time.monotonic()
    errors = [str(e) for e in read_documents(path, name)[1]]
    seconds = time.monotonic() - start
    assert len(errors) == 1, errors
    assert re.match(rf"{re.escape(name)}:[1-9]\d*: ", errors[0]) and "\n" not in errors[0], errors
    return errors[0], seconds


def peak_megabytes(tmp_path: Path, name: str = "bad.yaml") -> float:
    """What reading the file written by `refused` peaks at (traced: slower, so not timed)."""
    tracemalloc.start()
    try:
        read_documents(tmp_path / name, name)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def line_of(error: str) -> int:
    return int(error.split(":")[1])


def test_a_billion_laughs_bomb_is_refused_quickly_in_little_memory(tmp_path: Path) -> None:
    error, seconds = refused(tmp_path, BILLION_LAUGHS, "bomb.yaml")
    field = re.fullmatch(rf"bomb\.yaml:\d+: (lol\d)\[\d+\]: more than {MAX_VALUES} values after expanding aliases",
                         error)
    assert field, error
    assert BILLION_LAUGHS.splitlines()[line_of(error) - 1].startswith(field[1] + ":")  # the line of the alias
    assert seconds < SECONDS and peak_megabytes(tmp_path, "bomb.yaml") < MEGABYTES


def test_a_merge_key_bomb_is_refused_quickly_in_little_memory(tmp_path: Path) -> None:
    error, seconds = refused(tmp_path, MERGE_BOMB)
    assert error == f"bad.yaml:1: x: more than {MAX_VALUES} values after expanding aliases"
    assert seconds < SECONDS and peak_megabytes(tmp_path) < MEGABYTES


def test_a_file_huge_only_after_expansion_is_refused_at_the_alias(tmp_path: Path) -> None:
    error, seconds = refused(tmp_path, HUGE_AFTER_EXPANSION)
    assert re.fullmatch(rf"bad\.yaml:2: b\[\d+\]: more than {MAX_VALUES} values after expanding aliases", error)
    assert seconds < SECONDS and peak_megabytes(tmp_path) < MEGABYTES


@pytest.mark.parametrize("text, expected", [
    ("ok: 1\nloop: &a\n  - 1\n  - *a\n", "bad.yaml:4: loop[1]: recursive alias: it is inside the node it names"),
    ("ok: 1\nloop: &a {again: *a}\n", "bad.yaml:2: loop.again: recursive alias: it is inside the node it names"),
    ("ok: 1\nloop: &a\n  <<: *a\n", "bad.yaml:3: loop: recursive alias in a merge key"),
])
def test_an_alias_inside_the_node_it_names_is_one_error_at_the_alias(tmp_path: Path, text: str, expected: str) -> None:
    error, seconds = refused(tmp_path, text)
    assert error == expected and seconds < SECONDS


@pytest.mark.parametrize("levels", [2_000, 100_000])
@pytest.mark.parametrize("style", ["flow list", "flow mapping", "block list"])
def test_deep_nesting_is_one_error_not_a_recursion_error(tmp_path: Path, levels: int, style: str) -> None:
    text = {"flow list": "[" * levels + "x" + "]" * levels,
            "flow mapping": "{a: " * levels + "x" + "}" * levels,
            "block list": "- " * levels + "x"}[style]
    error, seconds = refused(tmp_path, text + "\n")
    assert error == f"bad.yaml:1: nested deeper than {MAX_DEPTH} levels" and seconds < SECONDS


def test_block_nesting_is_refused_at_the_line_that_passes_the_limit(tmp_path: Path) -> None:
    text = "".join(" " * i + f"k{i}:\n" for i in range(200))  # the document is level 1, k{i}'s value level i + 2
    error, _ = refused(tmp_path, text)
    assert error == f"bad.yaml:{MAX_DEPTH}: nested deeper than {MAX_DEPTH} levels"


def test_nesting_up_to_the_limit_still_loads(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text("[" * (MAX_DEPTH - 1) + "x" + "]" * (MAX_DEPTH - 1) + "\n")
    docs, errors = read_documents(tmp_path / "ok.yaml", "ok.yaml")
    assert not errors and len(docs) == 1


def test_aliases_nesting_past_the_limit_are_refused_at_the_alias(tmp_path: Path) -> None:
    # each anchor is 30 levels deep and holds the one before: fine as written, 30 more levels per alias expanded
    text = "a0: &a0 x\n" + "".join(f"a{i}: &a{i} {'[' * 30}*a{i - 1}{']' * 30}\n" for i in range(1, 100))
    error, seconds = refused(tmp_path, text)
    assert re.fullmatch(rf"bad\.yaml:4: a3(\[0\])+: nested deeper than {MAX_DEPTH} levels after expanding aliases",
                        error), error
    assert seconds < SECONDS


def test_a_recursion_error_inside_pyyaml_is_one_error_not_a_traceback(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(documents, "MAX_DEPTH", 10**9)  # without the limit, PyYAML's composer recurses per level
    error, _ = refused(tmp_path, "[" * 100_000 + "]" * 100_000 + "\n")
    assert error.startswith("bad.yaml:1: cannot read: RecursionError: ")


@pytest.mark.parametrize("text, line", [
    ("ok: 1\n? [a, b]\n: c\n", 2),
    ("ok: 1\nflow: {[a, b]: c}\n", 2),
    ("ok: 1\n? {a: 1}\n: c\n", 2),
    ("ok: 1\nm: &m {a: 1}\nuse:\n  *m : c\n", 4),
])
def test_a_complex_key_is_one_error_at_its_line(tmp_path: Path, text: str, line: int) -> None:
    error, seconds = refused(tmp_path, text)
    assert re.fullmatch(rf"bad\.yaml:{line}:( \w+:)? keys must be plain scalars, not a mapping or a list", error), error
    assert seconds < SECONDS


def test_a_6_mb_file_is_refused_by_its_size_without_being_parsed(tmp_path: Path) -> None:
    error, seconds = refused(tmp_path, "k: " + "x" * (6 << 20) + "\n")
    assert error == f"bad.yaml:1: larger than {MAX_FILE_BYTES} bytes, the limit for a spec file"
    assert seconds < 0.5 and peak_megabytes(tmp_path) < 1  # the size is checked before reading a byte


def test_a_file_at_the_size_limit_is_read_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    body = "ok: 1\n"
    (tmp_path / "full.yaml").write_text(body + "#" * (MAX_FILE_BYTES - len(body) - 1) + "\n")
    assert read_documents(tmp_path / "full.yaml", "full.yaml")[1] == []
    error, _ = refused(tmp_path, body + "#" * (MAX_FILE_BYTES - len(body)) + "\n")
    assert "larger than" in error


def test_a_file_grown_after_its_size_was_checked_is_still_refused(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: os.stat_result((*real(fd)[:6], 0, *real(fd)[7:])))  # size 0
    error, _ = refused(tmp_path, "k: " + "x" * (4 << 20) + "\n")
    assert "larger than" in error and peak_megabytes(tmp_path) < 3  # read no more than the limit and a byte


def test_a_dense_file_under_the_size_limit_stops_at_the_value_limit(tmp_path: Path) -> None:
    error, seconds = refused(tmp_path, "[" + "0," * (MAX_FILE_BYTES // 2 - 2) + "0]\n")
    assert error == f"bad.yaml:1: more than {MAX_VALUES} values, the limit for a spec file" and seconds < SECONDS


@pytest.mark.parametrize("text, expected", [
    ("spec:\n  size: !!int lots\n", "bad.yaml:2: spec.size: not a valid !!int"),
    ("spec:\n  ratio: !!float\n", "bad.yaml:2: spec.ratio: not a valid !!float"),
    ("spec:\n  when: !!timestamp soon\n", "bad.yaml:2: spec.when: not a valid !!timestamp"),
])
def test_an_explicit_tag_pyyaml_cannot_construct_is_one_error(tmp_path: Path, text: str, expected: str) -> None:
    assert refused(tmp_path, text)[0] == expected


def test_non_string_keys_are_unknown_fields_like_any_other(tmp_path: Path) -> None:
    write(tmp_path / "net.yaml", network_spec() + "  1: one\n  null: nothing\n  2020-01-01: day\n")
    errors = [str(e) for e in load(tmp_path, ImageFiles()).errors]
    assert errors == [f"{tmp_path}/net.yaml:{n}: spec.{key}: unknown field" for n, key in
                      [(10, "1"), (11, "None"), (12, "2020-01-01")]]


def test_a_key_holding_a_newline_keeps_its_error_on_one_line(tmp_path: Path) -> None:
    write(tmp_path / "net.yaml", network_spec() + '  "two\\nlines": x\n')
    errors = [str(e) for e in load(tmp_path, ImageFiles()).errors]
    assert errors == [f"{tmp_path}/net.yaml:10: spec.'two\\nlines': unknown field"]


TOKENS = ["[", "]", "{", "}", ": ", ":", "- ", "? ", "&a ", "*a", "&b ", "*b", "<<: ", "\n", "\n  ", " ", "x", "1",
          "~", "!!map ", "!!set ", "!!int ", "!!float ", "!!timestamp ", "!!binary ", "!foo ", "---\n", "...\n", ",",
          "'", '"', "#", "|\n", ">\n", "\t", "%YAML 1.1\n", "=", "\x01", "\ufeff", ".nan"]


def test_random_input_never_raises_and_every_error_is_one_line(tmp_path: Path) -> None:
    rng = random.Random(7)
    path = tmp_path / "fuzz.yaml"
    for _ in range(3000):
        path.write_text("".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 40))))
        for error in read_documents(path, "fuzz.yaml")[1]:
            assert "\n" not in str(error) and "cannot read" not in str(error), (str(error), path.read_text())


NORMAL = network_spec() + """---
apiVersion: warmvm/v1
kind: VM
metadata: {name: vm-a}
spec: {vcpus: 2, memory: 512Mi}
---
# an anchor merged into the same document
apiVersion: warmvm/v1
kind: VM
metadata: {name: vm-b}
spec:
  <<: &small {vcpus: 2, memory: 512Mi}
  running: false
"""


def test_a_normal_multi_document_spec_still_loads(tmp_path: Path) -> None:
    write(tmp_path / "all.yaml", NORMAL)
    desired = load(tmp_path, ImageFiles())
    assert desired.errors == () and set(desired.networks) == {"default"}
    a, b = desired.vms["vm-a"], desired.vms["vm-b"]
    assert (a.vcpus, a.memory, a.running) == (b.vcpus, b.memory, not b.running) == (2, 512 << 20, True)
    assert (a.source.line, b.source.line) == (11, 17)


def test_the_cli_prints_one_line_per_bad_file_and_no_traceback(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    bad = {"bomb.yaml": BILLION_LAUGHS, "deep.yaml": "[" * 100_000 + "]" * 100_000 + "\n",
           "loop.yaml": "loop: &a [*a]\n", "key.yaml": "? [a, b]\n: c\n", "merge.yaml": MERGE_BOMB,
           "big.yaml": "k: " + "x" * (6 << 20) + "\n", "tag.yaml": "size: !!int lots\n"}
    for name, text in bad.items():
        (specs / name).parent.mkdir(exist_ok=True)
        (specs / name).write_text(text)
    write(specs / "net.yaml", network_spec())
    result = warmvm(specs, tmp_path / "state", "plan")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    about_specs = [line for line in result.stderr.splitlines() if line.startswith(str(specs))]
    assert sorted(line.split(":")[0] for line in about_specs) == sorted(str(specs / name) for name in bad)
    assert all(re.match(rf"{re.escape(str(specs))}/\w+\.yaml:[1-9]\d*: \S", line) for line in about_specs)
