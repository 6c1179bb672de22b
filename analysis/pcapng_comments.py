"""Copy a pcapng capture, adding packet comments (``opt_comment``) to chosen frames.

Why a module of its own: a packet comment is how a capture carries a
judgement next to the bytes it is about (Wireshark shows it in the packet
list and as ``frame.comment``), so that whoever opens the file later sees,
for example, which datagrams an impairing proxy dropped.  Tools that add
them (``stacklab grade``, annotation commands) all go through
:func:`copy_with_comments`.

The copy streams block by block, in constant memory; every block is written
back byte for byte except the packet blocks that get comments, whose options
are rebuilt: the existing options are kept in order and one ``opt_comment``
per string is appended before ``opt_endofopt``.  Packet bytes, timestamps,
interface ids, interface and section blocks (with the section's own
comments) are never touched.  The output is written atomically: a reader
never sees half a file, and a failure leaves no file behind.

Frame numbers count packet blocks (Enhanced, Simple and the obsolete Packet
block) from 1, as Wireshark numbers frames.  A Simple Packet Block has no
options, so a comment for one is an error.  Specification:
https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-03.html
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from typing import BinaryIO, Final

from stacklab.analysis.pcapio import CaptureError
from stacklab.files import write_atomically

SHB: Final = 0x0A0D0D0A
EPB: Final = 0x00000006
SPB: Final = 0x00000003
OBSOLETE_PB: Final = 0x00000002
OPT_ENDOFOPT: Final = 0
OPT_COMMENT: Final = 1
_BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D
MAX_BLOCK: Final = 1 << 28
"""A block bigger than this is taken as corruption rather than read into memory."""


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def _option(endian: str, code: int, value: bytes) -> bytes:
    return (
        struct.pack(endian + "HH", code, len(value))
        + value
        + b"\0" * (_pad4(len(value)) - len(value))
    )


def _split_options(endian: str, body: bytes) -> list[bytes]:
    """The options of a block body (each one encoded, padding included), without opt_endofopt."""
    out: list[bytes] = []
    pos = 0
    while pos + 4 <= len(body):
        code, length = struct.unpack_from(endian + "HH", body, pos)
        if code == OPT_ENDOFOPT:
            break
        end = pos + 4 + _pad4(length)
        if end > len(body):
            raise CaptureError(f"option {code} runs past the end of its block")
        out.append(body[pos:end])
        pos = end
    return out


def _with_comments(endian: str, block_type: int, block: bytes, comments: Sequence[str]) -> bytes:
    """``block`` (a whole packet block) with ``comments`` appended to its options."""
    if block_type == SPB:
        raise CaptureError("a Simple Packet Block has no options: it cannot carry a comment")
    if block_type == EPB:
        fixed = 28  # type, length, interface, ts high, ts low, captured, original
        (captured,) = struct.unpack_from(endian + "I", block, 20)
    else:  # obsolete Packet Block: interface(2) drops(2) ts(8) captured(4) original(4)
        fixed = 28
        (captured,) = struct.unpack_from(endian + "I", block, 20)
    options_at = fixed + _pad4(captured)
    if options_at > len(block) - 4:
        raise CaptureError("a packet block is shorter than its captured length says")
    options = _split_options(endian, block[options_at:-4])
    options += [_option(endian, OPT_COMMENT, text.encode("utf-8")) for text in comments]
    body = block[8:options_at] + b"".join(options) + _option(endian, OPT_ENDOFOPT, b"")
    total = 8 + len(body) + 4
    return struct.pack(endian + "II", block_type, total) + body + struct.pack(endian + "I", total)


def _copy(src: BinaryIO, dst: BinaryIO, comments: Mapping[int, Sequence[str]]) -> int:
    head = src.read(12)
    if len(head) < 12 or struct.unpack_from("<I", head)[0] != SHB:
        raise CaptureError("not a pcapng file (packet comments need pcapng)")
    magic = head[8:12]
    if struct.unpack("<I", magic)[0] == _BYTE_ORDER_MAGIC:
        endian = "<"
    elif struct.unpack(">I", magic)[0] == _BYTE_ORDER_MAGIC:
        endian = ">"
    else:
        raise CaptureError("pcapng section header with an unknown byte-order magic")
    frame = 0
    pending = head
    while True:
        if len(pending) < 8:
            more = src.read(8 - len(pending))
            pending += more
            if not pending:
                break
            if len(pending) < 8:
                raise CaptureError("capture ends in the middle of a block header")
        if struct.unpack_from("<I", pending)[0] == SHB:
            # A new section may switch byte order: read its magic before its length.
            pending += src.read(max(0, 12 - len(pending)))
            if len(pending) < 12:
                raise CaptureError("capture ends in the middle of a section header")
            magic = pending[8:12]
            endian = "<" if struct.unpack("<I", magic)[0] == _BYTE_ORDER_MAGIC else ">"
        block_type, total = struct.unpack_from(endian + "II", pending)
        if total < 12 or total % 4 or total > MAX_BLOCK:
            raise CaptureError(f"block of type {block_type:#x} has an impossible length {total}")
        rest = src.read(total - len(pending))
        block = pending + rest
        pending = b""
        if len(block) < total:
            raise CaptureError("capture ends in the middle of a block")
        if block_type in (EPB, SPB, OBSOLETE_PB):
            frame += 1
            texts = comments.get(frame)
            if texts:
                block = _with_comments(endian, block_type, block, texts)
        dst.write(block)
    missing = sorted(n for n, texts in comments.items() if texts and not 1 <= n <= frame)
    if missing:
        raise CaptureError(
            f"comments for frame(s) {', '.join(map(str, missing[:5]))} but the capture has "
            f"{frame} frame(s)"
        )
    return frame


def write_with_comments(
    src: str | os.PathLike[str], dst: BinaryIO, comments: Mapping[int, Sequence[str]]
) -> int:
    """Stream pcapng ``src`` into the open binary ``dst`` with the comments; return the frames.

    For outputs that cannot be written atomically (standard output, a FIFO):
    what was written before an error stays written.  Raises
    :class:`~stacklab.analysis.pcapio.CaptureError` as :func:`copy_with_comments`.
    """
    try:
        with open(src, "rb") as source:
            return _copy(source, dst, comments)
    except OSError as exc:
        if exc.filename is None:  # the destination failed, not the source
            raise
        raise CaptureError(f"cannot read {os.fspath(src)}: {exc.strerror or exc}") from None
    except struct.error as exc:
        raise CaptureError(f"{os.fspath(src)}: damaged pcapng block ({exc})") from None


def copy_with_comments(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    comments: Mapping[int, Sequence[str]],
) -> int:
    """Copy pcapng ``src`` to ``dst`` with ``comments[n]`` added to frame ``n``; return the
    number of frames copied.

    Raises :class:`~stacklab.analysis.pcapio.CaptureError` (and writes nothing)
    when ``src`` is not a readable pcapng file or a frame number does not exist.
    ``dst`` may be ``src`` itself: the copy replaces it atomically.
    """
    counted: list[int] = []

    def write(handle: BinaryIO) -> None:
        try:
            with open(src, "rb") as source:
                counted.append(_copy(source, handle, comments))
        except OSError as exc:
            raise CaptureError(f"cannot read {os.fspath(src)}: {exc.strerror or exc}") from None
        except struct.error as exc:
            raise CaptureError(f"{os.fspath(src)}: damaged pcapng block ({exc})") from None

    write_atomically(dst, write)
    return counted[0]


__all__ = ["copy_with_comments", "write_with_comments"]
