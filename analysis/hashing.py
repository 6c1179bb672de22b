"""SHA-256 of many interleaved streams, hashed off the main thread.

Verifying a capture hashes every transfer's content, and at RUDP chunk sizes
(500 to 1400 bytes) SHA-256 costs as much as all the other per-packet work
together.  ``hashlib`` releases the GIL for updates of 2 KiB or more, so the
content is gathered per stream into 64 KiB blocks and a single worker thread
feeds them to the hash objects, in submission order, while the main thread
keeps reading the capture.  Results are exactly those of hashing in line.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from typing import Final

BLOCK: Final = 1 << 16


class StreamHash:
    """One stream's SHA-256, fed by :meth:`update`, read after :meth:`BackgroundHasher.wait`.

    The pieces are gathered in a list and joined once per block: growing a
    ``bytearray`` piece by piece reallocates (and copies) it dozens of times
    per block when many streams grow at once, which cost more than hashing.
    """

    __slots__ = ("_hasher", "parts", "sha", "size")

    def __init__(self, hasher: BackgroundHasher) -> None:
        self.sha = hashlib.sha256()
        # Callers on a hot path may append to parts and add to size themselves,
        # then flush() once size reaches BLOCK.
        self.parts: list[bytes] = []
        self.size = 0
        self._hasher = hasher

    def update(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size >= BLOCK:
            self.flush()

    def flush(self) -> None:
        """Hand the gathered bytes to the worker."""
        if self.parts:
            self._hasher.submit(self.sha, b"".join(self.parts))
            self.parts = []
            self.size = 0

    def close(self) -> None:
        """No more data."""
        self.flush()


class BackgroundHasher:
    """One worker thread that applies queued updates in order (started on first use).

    With fewer than four cores the updates are applied at once instead: the
    worker's GIL hand-overs then cost the reading thread more than the
    hashing itself (SHA-256 runs at well over 1 GB/s here).
    """

    def __init__(self, threaded: bool | None = None) -> None:
        self.threaded = (os.cpu_count() or 1) >= 4 if threaded is None else threaded
        self._queue: queue.Queue[tuple[hashlib._Hash, bytes] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def stream(self) -> StreamHash:
        return StreamHash(self)

    def submit(self, sha: hashlib._Hash, data: bytes) -> None:
        if not self.threaded:
            sha.update(data)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="stacklab-sha256", daemon=True)
            self._thread.start()
        self._queue.put((sha, data))

    def _work(self) -> None:
        get = self._queue.get
        done = self._queue.task_done
        while True:
            item = get()
            if item is None:
                done()
                return
            sha, data = item
            sha.update(data)
            done()

    def wait(self) -> None:
        """Block until every submitted update has been applied."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
