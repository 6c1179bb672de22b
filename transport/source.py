"""Where the sender's chunks come from: a source it pulls from, without ever blocking.

The Go-Back-N sender does not hold the content.  When its window has room
for a new chunk it calls :meth:`ChunkSource.take` with the chunk size, and
the source answers at once with one of:

* a chunk: exactly ``size`` bytes, fewer only for the last one;
* ``None`` (nothing yet): the sender stops and waits; whoever feeds the
  source runs the session again when data arrives (the socket loop is poked);
* ``b""`` (the end): the content is over, :meth:`ChunkSource.digest` gives
  its SHA-256 for the FIN.

A source whose producer failed (an origin that closed mid-body) raises
:class:`SourceFailed` from ``take``: the sender then ends the transfer in a
way that cannot look complete (see :mod:`stacklab.transport.sender`).

:class:`MemorySource` serves bytes already in memory (error texts, the
simulator, tests, stand-in fetchers).  The source a fetch worker thread fills
while reading an HTTP body lives in :mod:`stacklab.services.body_stream`,
because threads are I/O and this package has none.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from stacklab.transport.integrity import content_digest

__all__ = ["ChunkSource", "IncrementalDigest", "MemorySource", "SourceFailed", "as_source"]


class SourceFailed(Exception):
    """The content could not be produced to its end; ``reason`` says why, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ChunkSource(Protocol):
    """What :class:`~stacklab.transport.sender.GbnSender` pulls its chunks from."""

    @property
    def exact_length(self) -> int | None:
        """The content's length when it is known and can no longer fail, else None.

        With it, the sender knows its FIN's sequence number from the start
        (and refuses a content too long for 32-bit sequence numbers at once).
        """
        ...

    def take(self, size: int) -> bytes | memoryview | None:
        """The next chunk, ``None`` for nothing yet, ``b""`` at the end; SourceFailed."""
        ...

    def digest(self) -> bytes:
        """SHA-256 of the whole content; valid once ``take`` returned ``b""``."""
        ...

    def close(self) -> None:
        """The sender needs nothing more: a producer feeding the source may stop."""
        ...


class MemorySource:
    """A source over bytes already in memory: chunks are views, nothing is copied."""

    def __init__(self, content: bytes | bytearray | memoryview) -> None:
        self._content = content
        self._view = memoryview(content)
        self._offset = 0
        self._length = len(self._view)

    @property
    def exact_length(self) -> int:
        return self._length

    @property
    def drained(self) -> bool:
        return self._offset >= self._length

    @property
    def buffered(self) -> int:
        """Bytes held: the whole content (a memory source is not flat in the size)."""
        return self._length

    def take(self, size: int) -> memoryview | bytes:
        offset = self._offset
        if offset >= self._length:
            return b""
        self._offset = offset + size
        return self._view[offset : offset + size]

    def digest(self) -> bytes:
        return content_digest(self._content)

    def close(self) -> None:
        """Nothing to stop."""


class IncrementalDigest:
    """SHA-256 fed piece by piece, for producers that never hold the whole content."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.length = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self.length += len(data)

    def digest(self) -> bytes:
        return self._hash.digest()


def as_source(content: bytes | bytearray | memoryview | ChunkSource) -> ChunkSource:
    """``content`` itself when it is a source, else a :class:`MemorySource` over it."""
    if isinstance(content, bytes | bytearray | memoryview):
        return MemorySource(content)
    return content
