"""The CRC32C trailer and content digest used when integrity is negotiated.

The 11-byte header has no checksum, so a corrupted datagram would otherwise
be delivered as good data.  With integrity on, every datagram of the session
ends with CRC32C (Castagnoli, big endian) computed over all bytes before it,
header included: a flipped bit in the sequence number, the flag or the data
is caught, the datagram dropped and later resent.  The FIN additionally
carries the SHA-256 of the whole content, so the receiver can refuse a file
that is wrong end to end.
"""

from __future__ import annotations

import hashlib

from crc32c import crc32c

from stacklab.wire import RUDP_CRC_TRAILER_LEN
from stacklab.wire import crc_trailer_ok as check_trailer

__all__ = ["add_trailer", "check_trailer", "content_digest"]


def add_trailer(datagram: bytes) -> bytes:
    """``datagram`` followed by its CRC32C."""
    return datagram + crc32c(datagram).to_bytes(RUDP_CRC_TRAILER_LEN, "big")


def content_digest(content: bytes | bytearray | memoryview) -> bytes:
    """SHA-256 of the transferred content, as carried in the FIN payload."""
    return hashlib.sha256(content).digest()
