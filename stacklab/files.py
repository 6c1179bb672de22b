"""Write output files so that a reader never sees half of one, and never in the wrong place.

Fetched content, reports, charts, the Lua dissector (Wireshark may be
reading its plugin folder) and JUnit files for CI all go through
:func:`write_atomically`: the bytes go to a temporary file in the same
folder, are flushed to disk, and the file is renamed over the target, which
is atomic on POSIX.  A failure leaves the target as it was and no temporary
file behind.

Every command that writes decides *where* through one policy,
:func:`resolve_output`, so that they all behave alike when the target exists:

- an input of the same run (the same inode, whatever the spelling: a hard
  link, a symlink, ``./x``) is never written over;
- an existing regular file is replaced only with ``--force`` (or when the
  command documents replacing as its default, like ``fetch``, which keeps the
  original client's behaviour);
- a FIFO or a character device (``/dev/null``, ``/dev/stdout``, a terminal)
  is written *into*, never replaced by a regular file;
- a symlink is followed: the file it points to is the target, the link stays;
- ``-`` means standard output.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO, Literal

from stacklab.errors import UserError

STDOUT = "-"
"""The output name that means standard output."""


class OutputError(UserError):
    """The output cannot go where it was asked to (an input, an existing file, a folder)."""


@dataclass(frozen=True)
class Output:
    """Where one output goes, decided by :func:`resolve_output`.

    ``kind`` is ``"file"`` (written atomically, maybe replacing a file),
    ``"stream"`` (a FIFO or a device, opened and written into) or
    ``"stdout"``.  ``path`` is what the user gave (for messages); ``target``
    is the path actually written (a symlink resolved).
    """

    path: str
    target: str
    kind: Literal["file", "stream", "stdout"]

    @property
    def is_file(self) -> bool:
        return self.kind == "file"

    def __str__(self) -> str:
        return "standard output" if self.kind == "stdout" else self.path


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def resolve_output(
    path: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    force: bool = False,
    replace_by_default: bool = False,
    allow_stdout: bool = True,
) -> Output:
    """Decide how ``path`` may be written, or raise :class:`OutputError` saying why not.

    ``inputs`` are the files this run reads (``None`` entries are ignored);
    ``force`` is the command's ``--force``; ``replace_by_default`` is for the
    commands documented to replace an existing file without it.
    """
    name = os.fspath(path)
    if name == STDOUT:
        if not allow_stdout:
            raise OutputError("'-' (standard output) is not possible for this output")
        return Output(name, name, "stdout")
    if name == "":
        raise OutputError("an empty output path")
    for source in inputs:
        if source is not None and _same_file(name, os.fspath(source)):
            raise OutputError(f"{name}: is an input of this run; refusing to write over it")
    target = os.path.realpath(name) if os.path.islink(name) else name
    try:
        st = os.stat(target)
    except FileNotFoundError:
        folder = os.path.dirname(os.path.abspath(target))
        if not os.path.isdir(folder):
            raise OutputError(f"cannot write {name}: no such folder {folder}") from None
        return Output(name, target, "file")
    except OSError as exc:
        raise OutputError(f"{name}: {exc.strerror}") from None
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
        return Output(name, target, "stream")
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{name}: is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{name}: not a regular file, a FIFO or a character device")
    if not (force or replace_by_default):
        raise OutputError(f"{name}: already exists (--force replaces it)")
    return Output(name, target, "file")


def write_output(out: Output, content: bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``content`` where :func:`resolve_output` decided: atomically, into a stream, or stdout.

    A stream (FIFO, device, standard output) cannot be written atomically;
    what was written before a failure stays written there, as with ``cat``.
    """
    if out.kind == "file":
        write_atomically(out.target, content)
        return
    if out.kind == "stdout":
        handle: BinaryIO = sys.stdout.buffer
        sys.stdout.flush()
        _write_to(handle, content)
        handle.flush()
        return
    with open(out.target, "wb") as stream:  # O_TRUNC is ignored by FIFOs and devices
        _write_to(stream, content)


def _write_to(handle: BinaryIO, content: bytes | Callable[[BinaryIO], object]) -> None:
    if isinstance(content, bytes):
        handle.write(content)
    else:
        content(handle)


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
