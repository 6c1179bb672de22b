"""One JSON document written piece by piece, each record of a long list on one line.

``stacklab verify --json`` on a capture of thousands of sessions prints
megabytes of JSON.  ``json.dumps(document, indent=2)`` builds all of it in
memory before the first byte goes out, and with ``indent`` it runs the
standard library's pure-Python encoder (the C encoder knows no
indentation): on a capture of 1,250 sessions that took as long as reading
the capture, and doubled the peak memory.

:class:`JsonWriter` writes the document's frame indented as
``json.dumps(indent=2)`` would (objects and the lists given as generators,
one member per line) and every other value on one line by the C encoder:
a check, a session, a list of frame numbers.  The text differs from
``indent=2`` in whitespace only; ``json.loads`` gives the same document,
keys in the same order.  A generator's items are written as it produces
them, so only one record's text exists at a time.
"""

from __future__ import annotations

import json
from types import GeneratorType
from typing import IO, Any

_line = json.JSONEncoder(separators=(", ", ": ")).encode


class JsonWriter:
    """Write one JSON document to a text stream as its parts become ready.

    :meth:`write` takes the document as plain data in which any list may be
    a generator instead (of sessions, say): such a list is written one item
    per line, each item as the generator produces it.  A dict that holds
    such a generator, at any depth of dicts, is written one member per
    line; every other value is written on one line.
    """

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self._counts: list[int] = []  # members written so far, per open container

    def write(self, value: Any) -> None:
        """Write ``value`` as the next member of the open container (or as the document)."""
        if type(value) is GeneratorType:
            self._open("[")
            for item in value:
                self._next()
                self.write(item)
            self._close("]")
        elif isinstance(value, dict) and _streams(value):
            self._open("{")
            for name, member in value.items():
                self._next()
                self.out.write(_line(name) + ": ")
                self.write(member)
            self._close("}")
        else:
            self.out.write(_line(value))

    def _open(self, bracket: str) -> None:
        self.out.write(bracket)
        self._counts.append(0)

    def _next(self) -> None:
        """The separator and indentation before the next member of the open container."""
        count = self._counts[-1]
        self._counts[-1] = count + 1
        self.out.write(("," if count else "") + "\n" + "  " * len(self._counts))

    def _close(self, bracket: str) -> None:
        count = self._counts.pop()
        self.out.write(("\n" + "  " * len(self._counts) if count else "") + bracket)


def _streams(value: dict[Any, Any]) -> bool:
    """Whether a dict holds a generator, at any depth of dicts (and is written member by member)."""
    for member in value.values():
        kind = type(member)
        if kind is GeneratorType or (kind is dict and _streams(member)):
            return True
    return False
