"""Split a UDP GSO batch, as a capture records it, back into its RUDP segments.

A sender using UDP segmentation offload (``UDP_SEGMENT``) hands the kernel
one buffer of equal-size datagrams; the kernel cuts it into datagrams of that
size after the loopback capture point, so a capture on ``lo`` records the
whole buffer as ONE oversized UDP datagram.  The receiver never sees it so:
it gets the datagrams (or, having asked for UDP GRO, the same buffer with the
size in a control message).  Every reader of captures (decode, both verify
engines, the Scapy layer, the Lua dissector) therefore splits such a
datagram into the datagrams the kernel sent, with the same rules:

* a datagram on the RUDP port is a batch when it holds more bytes than its
  first header's length field counts;
* walking the length fields must cut it into segments of one size, the last
  one possibly shorter (the kernel's rule), each at least a header long;
* the session decides the segment size when the capture saw its SYN-ACK:
  with options negotiated a segment is at most the header plus the
  negotiated chunk (plus the CRC32C trailer with integrity); a session
  whose SYN-ACK had no options is the original protocol, which never sends
  batches; a session whose handshake the capture missed is split on the
  length fields alone.

Anything else is malformed: the datagram is left whole, and the reason is
reported (a length field that disagrees with the batch is never silently
accepted).  Pure functions, no I/O.
"""

from __future__ import annotations

from typing import Final

from stacklab.wire import RUDP_CRC_TRAILER_LEN, RUDP_HEADER_LEN, RUDP_LEN_AT

UNKNOWN: Final = 0
"""Segment limit of a session whose handshake the capture did not see: length fields alone."""
LEGACY: Final = -1
"""Segment limit of an original-protocol session: it never sends batches."""


def segment_limit(options: dict[str, object] | None, synack_seen: bool) -> int:
    """The largest segment a session may batch, from the options its SYN-ACK accepted.

    ``options`` is the SYN-ACK's JSON (None when it had none): 11 + chunk
    (+ 4 with integrity).  No options in a SYN-ACK the capture saw: the
    original protocol, :data:`LEGACY`; no SYN-ACK seen: :data:`UNKNOWN`.
    """
    if options is None:
        return LEGACY if synack_seen else UNKNOWN
    chunk = options.get("chunk")
    if type(chunk) is not int or chunk < 1:
        return UNKNOWN
    trailer = RUDP_CRC_TRAILER_LEN if options.get("integrity") is True else 0
    return RUDP_HEADER_LEN + chunk + trailer


def is_batch(buf: bytes, start: int, stop: int) -> bool:
    """Whether ``buf[start:stop]`` holds bytes beyond its first header's length field."""
    if stop - start < RUDP_HEADER_LEN:
        return False
    at = start + RUDP_LEN_AT
    return stop - start > RUDP_HEADER_LEN + ((buf[at] << 8) | buf[at + 1])


def split_batch(buf: bytes, start: int, stop: int, limit: int = UNKNOWN) -> list[int] | str:
    """Cut the datagram ``buf[start:stop]`` into its GSO segments.

    Returns the boundaries ``[start, end1, ..., stop]`` (two or more
    segments), or a one-line reason why the datagram is not a valid batch.
    ``limit`` is :func:`segment_limit`'s answer for the datagram's session.
    Only meaningful for a datagram :func:`is_batch` accepts.
    """
    if limit == LEGACY:
        return (
            "bytes beyond the length field in a session without negotiated options: "
            "the original protocol never sends GSO batches"
        )
    bounds = [start]
    pos = start
    while pos < stop:
        left = stop - pos
        index = len(bounds)
        if left < RUDP_HEADER_LEN:
            return (
                f"GSO segment {index} is {left} bytes, shorter than the "
                f"{RUDP_HEADER_LEN}-byte RUDP header"
            )
        length = (buf[pos + RUDP_LEN_AT] << 8) | buf[pos + RUDP_LEN_AT + 1]
        end = pos + RUDP_HEADER_LEN + length
        if end > stop:
            return (
                f"GSO segment {index} has length field {length}, "
                f"only {left - RUDP_HEADER_LEN} bytes left"
            )
        bounds.append(end)
        pos = end
    size = bounds[1] - bounds[0]
    count = len(bounds) - 1
    for index in range(1, count + 1):
        got = bounds[index] - bounds[index - 1]
        if got != size and not (index == count and got < size):
            return (
                f"GSO segment {index} is {got} bytes where the batch's segments are {size}: "
                "length fields that disagree with the segment size"
            )
    if limit > 0 and size > limit:
        return (
            f"GSO segments of {size} bytes, larger than the session's negotiated "
            f"{limit} (header, chunk and trailer)"
        )
    return bounds
