"""A bounded buffer between a fetch worker thread and the RUDP socket loop.

The worker reads the origin's body in blocks and puts them in
(:meth:`BodyStream.put`); the socket loop's sender takes chunks out
(:meth:`BodyStream.take`: the stream is a
:class:`~stacklab.transport.source.ChunkSource`).  Memory stays flat in the
body's size:

* back-pressure: ``put`` blocks while its block would take the bytes waiting
  untaken beyond ``read_ahead``, so
  the worker reads no faster than the client acknowledges (the sender takes a
  chunk only when its window lets it leave);
* blocks are a whole number of chunks, so a chunk is a view into one block,
  never a copy; a block lives as long as a chunk of it is unacknowledged;
* the SHA-256 for the FIN is computed by the worker as blocks arrive
  (``hashlib`` lets go of the GIL for large buffers), never over the whole.

``take`` never blocks: "nothing yet" is ``None``, and the next ``put`` (or
the end) then calls ``notify``, which wakes the loop to run the session
again.  One lock, taken once per block on either side, not per chunk.
:meth:`close` (the session ended: done, failed, freed, or the server
stopping) makes a blocked or later ``put`` raise :class:`StreamClosed`, so
the worker stops reading and closes the origin connection.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from stacklab.transport.source import IncrementalDigest, SourceFailed

BLOCK = 256 * 1024
"""Target block size: a whole number of chunks near this."""
READ_AHEAD = 1024 * 1024
"""Bytes the worker may read ahead of the sender (on top of the window it holds)."""


class StreamClosed(Exception):
    """The session no longer wants the body: stop reading it."""


class BodyStream:
    """A :class:`~stacklab.transport.source.ChunkSource` fed by another thread; see the module."""

    def __init__(
        self,
        chunk_size: int,
        *,
        digest: bool = True,
        read_ahead: int = READ_AHEAD,
        block: int = BLOCK,
        notify: Callable[[], None] | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.chunk_size = chunk_size
        self.block_size = max(1, block // chunk_size) * chunk_size
        self.read_ahead = max(read_ahead, self.block_size)
        self.notify = notify
        self._digest = IncrementalDigest() if digest else None
        self._cond = threading.Condition()
        self._blocks: deque[bytearray | bytes] = deque()
        self._queued = 0  # bytes in _blocks
        self._ended = False
        self._error: str | None = None
        self._closed = False
        self._starved = False  # take() said "nothing yet": the next put must notify
        # Consumer side only (the socket loop's thread): the block being cut into chunks.
        self._current: memoryview | None = None
        self._offset = 0
        self._state = "pending"  # why the last _next_block found nothing
        self.peak_queued = 0  # the most bytes ever waiting untaken (for tests and stats)

    # -- producer side (the fetch worker) -------------------------------------------

    def put(self, block: bytearray | bytes, *, last: bool = False) -> None:
        """Queue ``block`` (a whole number of chunks unless ``last``); blocks when full.

        The caller must not touch ``block`` afterwards.  StreamClosed when the
        session ended.
        """
        if len(block) % self.chunk_size and not last:
            raise ValueError("only the last block may end with a partial chunk")
        if self._digest is not None and block:
            self._digest.update(block)  # outside the lock: the loop is never held up by it
        with self._cond:
            # Never more than read_ahead bytes waiting (one block always fits).
            while self._queued and self._queued + len(block) > self.read_ahead:
                if self._closed:
                    break
                self._cond.wait()
            if self._closed:
                raise StreamClosed
            if block:
                self._blocks.append(block)
                self._queued += len(block)
                self.peak_queued = max(self.peak_queued, self._queued)
            if last:
                self._ended = True
            wake = self._starved
            self._starved = False
        if wake and self.notify is not None:
            self.notify()

    def fail(self, reason: str) -> None:
        """The body cannot be read to its end: the sender will abort the transfer."""
        with self._cond:
            if self._closed or self._ended:
                return
            self._error = reason
            wake = self._starved
            self._starved = False
        if wake and self.notify is not None:
            self.notify()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- consumer side (the socket loop) ----------------------------------------------

    @property
    def exact_length(self) -> None:
        return None  # a body may still fail before its end

    @property
    def drained(self) -> bool:
        current = self._current
        if current is not None and self._offset < len(current):
            return False
        return self._ended and not self._blocks

    @property
    def buffered(self) -> int:
        """Bytes held here: untaken blocks and the rest of the current one."""
        current = self._current
        return self._queued + (len(current) - self._offset if current is not None else 0)

    def take(self, size: int) -> bytes | memoryview | None:
        current = self._current
        offset = self._offset
        if current is None or offset >= len(current):
            current = self._next_block()
            if current is None:
                return self._at_end()
            offset = 0
        self._offset = offset + size
        return current[offset : offset + size]

    def _next_block(self) -> memoryview | None:
        """The next queued block, or None with ``_state`` saying why (read under the lock)."""
        with self._cond:
            if not self._blocks:
                self._current = None
                if self._error is not None:
                    self._state = "failed"
                elif self._ended:
                    self._state = "ended"
                else:
                    self._state = "pending"
                    self._starved = True
                return None
            block = self._blocks.popleft()
            self._queued -= len(block)
            self._cond.notify()
        self._current = memoryview(block)
        return self._current

    def _at_end(self) -> bytes | None:
        if self._state == "failed":
            raise SourceFailed(self._error or "the body failed")
        return b"" if self._state == "ended" else None

    def digest(self) -> bytes:
        if self._digest is None:
            raise RuntimeError("this stream was made without a digest")
        return self._digest.digest()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._blocks.clear()
            self._queued = 0
            self._cond.notify_all()
        self._current = None
