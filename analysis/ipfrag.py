"""IPv4 and IPv6 fragment reassembly for the capture readers.

A UDP datagram bigger than the path's MTU leaves the sender as several IP
fragments (a 4000-byte RUDP chunk at MTU 1500: three), and only the whole
datagram means anything to RUDP.  The receiving host, and Wireshark before it
calls any UDP dissector, put the fragments back together; so do
``stacklab decode`` and the native ``stacklab verify`` engine through
:class:`Reassembler`, so that both engines see the same datagrams.

The rules, chosen to match Wireshark's (``ip.defragment``, ``ipv6.defragment``,
``epan/reassemble.c``) as far as a bounded, streaming reader can:

* IPv4 fragments belong together when their (source, destination,
  identification, protocol) agree, as RFC 791 and the receiving host say.
  (Wireshark keys on the protocol XOR the identification: between the same
  two hosts, a TCP fragment with identification 0x000a and a UDP one with
  0x001d meet there, 6 ^ 0x0a == 17 ^ 0x1d, and when one of them waits
  incomplete Wireshark splices them; here they stay apart.)  IPv6 fragments carry a Fragment extension
  header (next header 44) with a 32-bit identification; they belong together
  when (source, destination, identification) agree, and the protocol is the
  Fragment header's next header in the fragment at offset 0 (RFC 8200,
  section 4.5: the other fragments' values may differ).
* Fragments may come in any order.  The datagram is handed over, once, by the
  fragment that completes it: its frame number and time are those of that
  fragment (the LAST one captured, which is where Wireshark shows the
  reassembled datagram), and :attr:`Datagram.frames` lists every fragment.
* Overlapping and duplicate fragments: where fragments overlap, the bytes of
  the fragment with the lower offset are kept, and at equal offsets those of
  the fragment captured first, exactly as Wireshark assembles them; an exact
  duplicate therefore changes nothing ("first copy wins").  Every overlap is
  counted, and an overlap whose bytes differ is counted again as a conflict,
  because the receiving host may have kept the other copy (Linux discards
  such datagrams altogether, RFC 5722).  The first fragment without More
  Fragments fixes the datagram's length; a later one that says otherwise is
  counted as invalid and ignored.
* A finished datagram is forgotten at once, as in Wireshark and in the
  receiving host: an IP-level duplicate of a whole datagram is handed over a
  second time, and a lone late copy of one fragment starts a datagram that
  never completes.
* Memory and time are bounded: at most ``max_datagrams`` datagrams and
  ``max_bytes`` bytes of fragment data wait at once (beyond that the oldest is
  dropped and counted as evicted), a datagram gets at most
  :data:`MAX_FRAGMENTS` fragments (duplicates included; a 64 KiB datagram at
  the 576-byte MTU every IPv4 host accepts needs 119; FreeBSD stops at 16),
  and a datagram still incomplete ``timeout`` seconds of
  capture time after its first fragment is dropped and counted (30 s for
  IPv4 as Linux's ``ipfrag_time``, 60 s for IPv6 as RFC 8200 says).  Wireshark
  has no such limits; they only matter for captures that would exhaust them.
* A fragment cut short by the capture's snapshot length is counted and never
  used: the missing bytes are not guessed, so its datagram is not handed over
  unless a whole copy of that fragment comes later (Wireshark does the same).
  No partial datagram is ever handed over.

What was dropped and why is in :attr:`Reassembler.stats`;
:meth:`FragmentStats.problems` words it for a person.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

DEFAULT_MAX_DATAGRAMS: Final = 1024
"""Datagrams that may wait for fragments at once."""
DEFAULT_MAX_BYTES: Final = 4 << 20
"""Fragment bytes that may wait at once (Linux's ``ipfrag_high_thresh``)."""
IPV4_TIMEOUT: Final = 30.0
"""Seconds of capture time an IPv4 datagram may wait for its fragments (Linux ``ipfrag_time``)."""
IPV6_TIMEOUT: Final = 60.0
"""Seconds of capture time an IPv6 datagram may wait (RFC 8200, section 4.5)."""
MAX_FRAGMENTS: Final = 128
"""Fragments one datagram may have; past that it is dropped (each fragment costs a pass)."""
MAX_DATAGRAM: Final = 65535
"""Largest reassembled payload: IPv4 total length, IPv6 payload length (no jumbograms)."""
EXAMPLE_FRAMES: Final = 5
"""Frame numbers kept per kind of problem, to name them in a warning."""

FragmentKey = tuple[int, str, str, int, int]
"""(IP version, source, destination, identification, protocol; -1 for IPv6)."""


@dataclass(frozen=True, slots=True)
class Fragment:
    """One IP fragment as the capture holds it.

    ``offset`` is in bytes; ``data`` is what follows the IP header (IPv6:
    the Fragment header); ``cut`` counts the bytes of it that the IP header
    declares but the capture's snapshot length left out.
    """

    version: int
    src: str
    dst: str
    ident: int
    proto: int  # IPv4: the protocol field; IPv6: the Fragment header's next header
    offset: int
    more: bool
    data: bytes
    cut: int = 0

    @property
    def key(self) -> FragmentKey:
        proto = self.proto if self.version == 4 else -1
        return (self.version, self.src, self.dst, self.ident, proto)


@dataclass(frozen=True, slots=True)
class Datagram:
    """A reassembled IP payload: the bytes after the IP header(s), and its fragments' frames."""

    version: int
    src: str
    dst: str
    proto: int
    data: bytes
    frames: tuple[int, ...]


@dataclass
class FragmentStats:
    """What the reassembler saw, and what it could not hand over."""

    fragments: int = 0
    reassembled: int = 0
    overlaps: int = 0  # fragments that overlap bytes already held (duplicates included)
    conflicts: int = 0  # ... whose overlapping bytes differ
    invalid: int = 0  # beyond 65,535 bytes, or contradicting the datagram's length
    truncated: int = 0  # cut by the snapshot length, not used
    timed_out: int = 0  # datagrams dropped incomplete after the timeout
    evicted: int = 0  # datagrams dropped incomplete to stay within the memory bounds
    excess: int = 0  # datagrams dropped for having more than MAX_FRAGMENTS fragments
    incomplete: int = 0  # datagrams still incomplete at the end of the capture
    examples: dict[str, list[int]] = field(default_factory=dict)

    def note(self, kind: str, frame: int) -> None:
        frames = self.examples.setdefault(kind, [])
        if len(frames) < EXAMPLE_FRAMES:
            frames.append(frame)

    def problems(self) -> list[str]:
        """One line per kind of loss or doubt, naming frames; empty when all went well."""
        lines = []
        for kind, count, text in (
            ("incomplete", self.incomplete, "IP datagram(s) missing a fragment, not reassembled"),
            ("timed_out", self.timed_out, "IP datagram(s) still incomplete after the timeout"),
            ("evicted", self.evicted, "IP datagram(s) dropped incomplete (memory bound)"),
            ("excess", self.excess, f"IP datagram(s) dropped after {MAX_FRAGMENTS} fragments"),
            ("truncated", self.truncated, "IP fragment(s) cut by the snapshot length, not used"),
            ("invalid", self.invalid, "IP fragment(s) beyond 65,535 bytes or past the end"),
            ("conflicts", self.conflicts, "overlapping IP fragment(s) with different bytes"),
        ):
            if count:
                frames = self.examples.get(kind, [])
                named = ", ".join(str(n) for n in frames) + (", ..." if count > len(frames) else "")
                lines.append(f"{count} {text} (frames {named})")
        return lines


class _Pending:
    """The fragments of one datagram so far."""

    __slots__ = ("first_time", "frames", "length", "pieces", "proto", "size", "timeout")

    def __init__(self, time: float, timeout: float) -> None:
        self.first_time = time
        self.timeout = timeout
        self.pieces: list[tuple[int, int, bytes]] = []  # (offset, arrival, data)
        self.frames: list[int] = []
        self.length = -1  # known once the fragment without More Fragments arrives
        self.size = 0  # bytes held
        self.proto = -1  # IPv6: set by the fragment at offset 0


class Reassembler:
    """Collect fragments; :meth:`add` returns the datagram the last one completes.

    One per capture (the frames must come in capture order).  Call
    :meth:`finish` at the end to count what never completed.
    """

    def __init__(
        self,
        *,
        max_datagrams: int = DEFAULT_MAX_DATAGRAMS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout: float | None = None,
    ) -> None:
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.stats = FragmentStats()
        self._pending: OrderedDict[FragmentKey, _Pending] = OrderedDict()
        self._bytes = 0
        self._arrivals = 0

    @property
    def pending(self) -> int:
        """Datagrams waiting for fragments."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Fragment bytes held."""
        return self._bytes

    def add(self, fragment: Fragment, number: int, time: float) -> Datagram | None:
        """Add the fragment of frame ``number``; return the datagram when it is complete."""
        stats = self.stats
        stats.fragments += 1
        self._expire(time)
        if fragment.cut:
            stats.truncated += 1
            stats.note("truncated", number)
            return None
        end = fragment.offset + len(fragment.data)
        if end > MAX_DATAGRAM:
            stats.invalid += 1
            stats.note("invalid", number)
            return None
        key = fragment.key
        entry = self._pending.get(key)
        if entry is None:
            timeout = self.timeout
            if timeout is None:
                timeout = IPV4_TIMEOUT if fragment.version == 4 else IPV6_TIMEOUT
            entry = self._pending[key] = _Pending(time, timeout)
        elif len(entry.pieces) >= MAX_FRAGMENTS:
            self._drop(key, "excess")
            stats.excess += 1
            return None
        if not fragment.more:
            if entry.length < 0:
                entry.length = end
            elif entry.length != end:
                stats.invalid += 1
                stats.note("invalid", number)
                return None
        if fragment.offset == 0 and entry.proto < 0:
            entry.proto = fragment.proto
        self._overlap(entry, fragment, number)
        self._arrivals += 1
        entry.pieces.append((fragment.offset, self._arrivals, fragment.data))
        entry.frames.append(number)
        entry.size += len(fragment.data)
        self._bytes += len(fragment.data)
        datagram = self._complete(key, entry, fragment)
        if datagram is None:
            self._bound(key)
        return datagram

    def finish(self) -> FragmentStats:
        """Count the datagrams still incomplete (the capture ended); return the stats."""
        for entry in self._pending.values():
            self.stats.incomplete += 1
            self.stats.note("incomplete", entry.frames[0])
        self._pending.clear()
        self._bytes = 0
        return self.stats

    # -- internals ---------------------------------------------------------------

    def _overlap(self, entry: _Pending, fragment: Fragment, number: int) -> None:
        """Count the fragment if it overlaps bytes already held, and again if they differ."""
        start = fragment.offset
        stop = start + len(fragment.data)
        overlap = conflict = False
        for offset, _arrival, data in entry.pieces:
            low, high = max(start, offset), min(stop, offset + len(data))
            if low < high:
                overlap = True
                if data[low - offset : high - offset] != fragment.data[low - start : high - start]:
                    conflict = True
                    break
        if overlap:
            self.stats.overlaps += 1
        if conflict:
            self.stats.conflicts += 1
            self.stats.note("conflicts", number)

    def _complete(self, key: FragmentKey, entry: _Pending, fragment: Fragment) -> Datagram | None:
        """The datagram, if bytes 0..length are all there; assembled as Wireshark does.

        Pieces in order of offset, then of capture; each adds only the bytes
        past those already placed, so the lower offset (then the earlier
        copy) wins where they overlap.
        """
        length = entry.length
        if length < 0:
            return None
        pieces = entry.pieces
        pieces.sort()
        filled = 0
        for offset, _arrival, data in pieces:
            if offset > filled:
                return None  # a hole
            filled = max(filled, offset + len(data))
            if filled >= length:
                break
        if filled < length:
            return None
        buf = bytearray(length)
        filled = 0
        for offset, _arrival, data in pieces:
            stop = offset + len(data)
            if stop > length:
                self.stats.invalid += 1  # runs past the end the last fragment gave
                self.stats.note("invalid", entry.frames[0])
                stop = length
            if stop > filled:
                buf[filled:stop] = data[filled - offset : stop - offset]
                filled = stop
        del self._pending[key]
        self._bytes -= entry.size
        self.stats.reassembled += 1
        proto = entry.proto if fragment.version == 6 else fragment.proto
        return Datagram(
            fragment.version, fragment.src, fragment.dst, proto, bytes(buf), tuple(entry.frames)
        )

    def _expire(self, now: float) -> None:
        """Drop the datagrams whose first fragment is older than their timeout."""
        pending = self._pending
        while pending:
            key, entry = next(iter(pending.items()))
            if now - entry.first_time <= entry.timeout:
                return
            self._drop(key, "timed_out")
            self.stats.timed_out += 1

    def _bound(self, keep: FragmentKey) -> None:
        """Drop the oldest datagrams while over a memory bound (the one just fed last)."""
        pending = self._pending
        while len(pending) > self.max_datagrams or self._bytes > self.max_bytes:
            victim = next((k for k in pending if k != keep), keep)
            self._drop(victim, "evicted")
            self.stats.evicted += 1

    def _drop(self, key: FragmentKey, kind: str) -> None:
        entry = self._pending.pop(key)
        self._bytes -= entry.size
        self.stats.note(kind, entry.frames[0])
