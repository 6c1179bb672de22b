"""Reading expectation files (YAML or TOML) into plain data that remembers its line numbers.

An expectation file is written by hand and kept in CI next to its captures:
a typo in a key must not silently turn an expectation off, so unknown and
duplicated keys are refused with the line they are on.  PyYAML's safe loader
accepts a duplicated key (the last one wins), and neither PyYAML nor
:mod:`tomllib` hands back line numbers, so both are wrapped here: mappings come
back as :class:`Lined` dicts and lists as :class:`LinedList`, each knowing
the line of every key or item.
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any

import yaml


class ExpectationError(ValueError):
    """An expectation file that cannot be used: the message names the file and line."""


class Lined(dict[str, Any]):
    """A mapping from the file, with the line of each key (1-based) and of itself."""

    line: int = 0
    lines: dict[str, int]

    def __init__(self, line: int = 0) -> None:
        super().__init__()
        self.line = line
        self.lines = {}

    def line_of(self, key: str) -> int:
        return self.lines.get(key, self.line)


class LinedList(list[Any]):
    """A list from the file, with the line of each item."""

    line: int = 0
    lines: list[int]

    def __init__(self, line: int = 0) -> None:
        super().__init__()
        self.line = line
        self.lines = []


def load(path: str | os.PathLike[str]) -> Lined:
    """Read ``path`` (``.toml`` as TOML, anything else as YAML); the top level must be a mapping."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ExpectationError(f"{name}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ExpectationError(f"{name}: not UTF-8 text") from None
    data = _load_toml(name, text) if name.endswith(".toml") else _load_yaml(name, text)
    if not isinstance(data, Lined):
        raise ExpectationError(f"{name}:1: the file must be a mapping with a 'captures' key")
    return data


# ---------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """The safe loader, building :class:`Lined` mappings that refuse duplicated keys."""

    file_name = ""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Lined:
    loader.flatten_mapping(node)
    out = Lined(node.start_mark.line + 1)
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise ExpectationError(f"{loader.file_name}:{line}: key {key!r} is not a string")
        if key in out:
            raise ExpectationError(
                f"{loader.file_name}:{line}: duplicated key {key!r} (first on line {out.lines[key]})"
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = line
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LinedList:
    out = LinedList(node.start_mark.line + 1)
    for item in node.value:
        out.append(loader.construct_object(item, deep=True))
        out.lines.append(item.start_mark.line + 1)
    return out


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def _load_yaml(name: str, text: str) -> Any:
    loader = _Loader(text)
    loader.file_name = name
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ExpectationError(f"{name}{where}: not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ExpectationError(f"{name}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------
# TOML
# ---------------------------------------------------------------------------


def _load_toml(name: str, text: str) -> Any:
    """tomllib refuses duplicated keys itself (with the line); lines of keys are searched for."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExpectationError(f"{name}: not valid TOML: {exc}") from None
    return _lined_toml(data, text.splitlines(), 1)


def _key_line(lines: list[str], key: str, after: int) -> int:
    """The first line at or after ``after`` where ``key`` is set or opens a table."""
    bare = re.escape(key)
    quoted = re.escape(f'"{key}"') + "|" + re.escape(f"'{key}'")
    pattern = re.compile(rf"(^|[\s.{{,\[])({quoted}|{bare})\s*(=|\]|\.)")
    for number in range(max(after, 1), len(lines) + 1):
        if pattern.search(lines[number - 1]):
            return number
    return after


def _lined_toml(value: Any, lines: list[str], line: int) -> Any:
    if isinstance(value, dict):
        out = Lined(line)
        for key, item in value.items():
            at = _key_line(lines, key, line)
            out[key] = _lined_toml(item, lines, at)
            out.lines[key] = at
        return out
    if isinstance(value, list):
        seq = LinedList(line)
        at = line
        for item in value:
            if isinstance(item, dict) and item:
                at = _key_line(lines, next(iter(item)), at + (1 if seq else 0))
            seq.append(_lined_toml(item, lines, at))
            seq.lines.append(at)
        return seq
    return value
