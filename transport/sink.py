"""Where the receiver puts in-order content: in memory, or handed on in batches.

The Go-Back-N receiver appends each in-order chunk to a sink and asks it for
the SHA-256 when the FIN arrives.  :class:`MemorySink` keeps everything (the
``content`` of API users, the simulator, tests).  :class:`StreamSink` keeps
one batch: chunks are copied into a preallocated buffer (the datagram buffer
they come from is reused at once), and a full batch is hashed and handed to
``write`` (a file's ``write``: the caller owns the I/O), so memory is flat in
the content's size and writes are large.

The last, partial batch is hashed by :meth:`StreamSink.digest` (the FIN
needs the digest) but written only by :meth:`StreamSink.finish`: a short
answer is then still whole in memory, so the caller can recognise the app
server's error text before anything of it reaches the output.
"""

from __future__ import annotations

from collections.abc import Callable

from stacklab.transport.integrity import content_digest
from stacklab.transport.source import IncrementalDigest

__all__ = ["BATCH", "MemorySink", "StreamSink"]

BATCH = 1024 * 1024
"""Bytes a :class:`StreamSink` gathers before one ``write``."""


class MemorySink:
    """All the content in one growing ``bytearray`` (amortised appends)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.write: Callable[[bytes | memoryview], None] = self._buffer.extend

    @property
    def size(self) -> int:
        return len(self._buffer)

    @property
    def retained(self) -> int:
        """Bytes held in memory: all of them."""
        return len(self._buffer)

    @property
    def content(self) -> bytes:
        return bytes(self._buffer)

    @property
    def buffer(self) -> bytearray:
        """The content so far, not copied (to read, e.g. by the simulator's checker)."""
        return self._buffer

    def digest(self) -> bytes:
        return content_digest(self._buffer)


class StreamSink:
    """Batches content to ``write`` and hashes it on the way; see the module docstring."""

    def __init__(self, write: Callable[[memoryview], object], batch: int = BATCH) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1 byte")
        self._out = write
        self._buffer = bytearray(batch)
        self._view = memoryview(self._buffer)
        self._batch = batch
        self._filled = 0
        self._hashed = 0  # bytes of the current batch already in the digest
        self._digest = IncrementalDigest()
        self.written = 0  # bytes handed to ``write``

    @property
    def size(self) -> int:
        """Content bytes received so far (written or waiting in the batch)."""
        return self.written + self._filled

    @property
    def retained(self) -> int:
        """Bytes held in memory: the batch buffer, whatever the content's size."""
        return len(self._buffer)

    @property
    def pending(self) -> bytes:
        """The content not yet written (all of it while it fits in one batch)."""
        return bytes(self._view[: self._filled])

    def write(self, payload: bytes | memoryview) -> None:
        n = len(payload)
        filled = self._filled
        if filled + n > self._batch:
            self._flush()
            filled = 0
            if n > self._batch:  # a chunk larger than a batch: straight through
                self._digest.update(payload)
                self._out(memoryview(payload))
                self.written += n
                return
        self._view[filled : filled + n] = payload
        self._filled = filled + n

    def _flush(self) -> None:
        filled = self._filled
        if not filled:
            return
        if self._hashed < filled:
            self._digest.update(self._view[self._hashed : filled])
        self._out(self._view[:filled])
        self.written += filled
        self._filled = 0
        self._hashed = 0

    def digest(self) -> bytes:
        """SHA-256 of everything received; the partial batch stays unwritten."""
        if self._hashed < self._filled:
            self._digest.update(self._view[self._hashed : self._filled])
            self._hashed = self._filled
        return self._digest.digest()

    def finish(self) -> None:
        """Write what is left of the content."""
        self._flush()
