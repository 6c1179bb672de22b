"""Write output files so that a reader never sees half of one.

Fetched content, reports, charts, the Lua dissector (Wireshark may be
reading its plugin folder) and JUnit files for CI all go through
:func:`write_atomically`: the bytes go to a temporary file in the same
folder, are flushed to disk, and the file is renamed over the target, which
is atomic on POSIX.  A failure leaves the target as it was and no temporary
file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO


def write_atomically(
    path: str | os.PathLike[str], content: bytes | Callable[[BinaryIO], object]
) -> None:
    """Write ``content`` (bytes, or a function writing to a binary file) to ``path``.

    The file keeps the mode of the one it replaces; a new file gets the usual
    ``0o666`` less the umask (not the private mode of a temporary file).
    """
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    try:
        mode = os.stat(target).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(content, bytes):
                handle.write(content)
            else:
                content(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
