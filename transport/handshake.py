"""Stateless SYN handling: SYN cookies and the anti-amplification budget, sans-I/O.

A SYN allocates nothing.  :meth:`Handshake.answer_syn` computes the SYN-ACK
from the SYN alone, so a flood of SYNs from spoofed addresses costs the
server CPU and an answer each, never memory.  Session state is created only
by the command (:meth:`Handshake.accept_command`).

Cookies.  A plain SYN (the original client's) is answered exactly as in
WIRE.md, ``seq=0``.  A SYN carrying a stacklab options offer gets a cookie in
the SYN-ACK's ``seq`` field: ``profile (8 bits) | MAC (24 bits)`` where the
MAC is a keyed BLAKE2b of the time slot, the client's address and port, its
ISN, the profile and the option set it names.  The profile indexes a small,
bounded table of accepted option sets (at most :data:`MAX_PROFILES`).  A
profile unused for two cookie slots (no valid cookie can name it any more)
is evicted to make room for a new set, least recently used first; so a burst
of distinct offers cannot fill the table for good.  Only when every profile
was used in the last two slots is a new combination answered with the
original options (an empty SYN-ACK), which a stacklab client reports as a
downgrade (or refuses, when it requires integrity).  Because the MAC covers
the option set, a cookie can never be read against a slot reused since.  A
stacklab client echoes the cookie in the ``ack`` field of its command, which
proves it receives at its address; the original client sends ``ack=0``.

Commands from an address without a session:

* ``ack`` is a valid cookie (this or the previous slot): a *proven* session
  with the options of its profile;
* ``ack == 0``: a *legacy* session with the original options.  Its address is
  unproven until it acknowledges data (see ``ServerSession``);
* anything else: dropped and counted (``bad_cookie``); nothing is allocated.

Anti-amplification (the numbers the README quotes):

* toward an address that has proven nothing, every answer is at most
  :data:`AMPLIFICATION_FACTOR` (3, as in QUIC) times the datagram it answers:
  a plain SYN-ACK is 11 bytes for an 11-byte SYN; a negotiated SYN-ACK that
  would exceed 3x the SYN is replaced by the empty (original) SYN-ACK;
* a legacy session (no cookie echo) sends at most
  :data:`UNPROVEN_DATA_DATAGRAMS` DATA/FIN datagrams (one chunk and its
  resends) before the first ACK of data, then gives up; that bounds what one
  spoofed SYN + command (63 bytes) can draw to ``2 x 11`` bytes of ACKs plus
  ``6 x 511`` bytes of chunk copies.  This is the price of original-client
  compatibility: the original protocol gives a server nothing to prove an
  address with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from stacklab.transport.integrity import add_trailer, check_trailer
from stacklab.transport.options import (
    OptionLimits,
    OptionsError,
    TransferOptions,
    decode_options,
    encode_options,
)
from stacklab.transport.server import ServerSession
from stacklab.transport.session import ACK, DATA, SYN
from stacklab.wire import RUDP_CRC_TRAILER_LEN, RUDP_HEADER, RUDP_HEADER_LEN

AMPLIFICATION_FACTOR = 3
"""Bytes answered per byte received toward an address that has proven nothing."""
UNPROVEN_DATA_DATAGRAMS = 6
"""DATA/FIN datagrams a legacy session may send before its first ACK of data (1 + 5 resends)."""
MAX_PROFILES = 255
"""Distinct negotiated option sets a server remembers (profile 0 is the original options)."""
COOKIE_SLOT_S = 30.0
"""A cookie is valid in its time slot and the next one: 30 to 60 s to send the command."""
_MAC_MASK = 0xFFFFFF

Address = tuple[str, int]
SessionFactory = Callable[[], ServerSession]


@dataclass
class HandshakeStats:
    """What the stateless listener saw; the socket loop adds these to its counters."""

    syns: int = 0
    bad_syns: int = 0
    commands: int = 0
    bad_cookies: int = 0
    legacy: int = 0
    proven: int = 0
    shrunk: int = 0  # negotiated SYN-ACKs replaced by the empty one (3x bound, full table)
    evicted: int = 0  # profiles reused for a new option set (unused for two cookie slots)
    table_full: int = 0  # new option sets answered with the original ones: no profile free


class SynCookies:
    """Keyed cookies over (slot, address, port, ISN, profile); the key comes from the caller."""

    def __init__(self, secret: bytes, slot_seconds: float = COOKIE_SLOT_S) -> None:
        if len(secret) < 16:
            raise ValueError("the cookie secret must be at least 16 bytes")
        self._secret = secret[:64]
        self.slot_seconds = slot_seconds

    def _mac(self, slot: int, addr: Address, isn: int, profile: int, tag: bytes) -> int:
        h = hashlib.blake2b(key=self._secret, digest_size=4)
        h.update(f"{slot}|{addr[0]}|{addr[1]}|{isn}|{profile}|".encode())
        h.update(tag)
        return int.from_bytes(h.digest(), "big") & _MAC_MASK

    def make(self, addr: Address, isn: int, profile: int, now: float, tag: bytes = b"") -> int:
        """The cookie; ``tag`` binds it to what the profile means now (its option set)."""
        slot = int(now // self.slot_seconds)
        return (profile << 24) | self._mac(slot, addr, isn, profile, tag)

    def check(
        self, cookie: int, addr: Address, isn: int, now: float, tag: bytes = b""
    ) -> int | None:
        """The profile of a valid cookie for this address, ISN and tag, else None."""
        profile = cookie >> 24
        mac = cookie & _MAC_MASK
        slot = int(now // self.slot_seconds)
        for s in (slot, slot - 1):
            if self._mac(s, addr, isn, profile, tag) == mac:
                return profile
        return None


class Handshake:
    """Answers SYNs without state and turns a command into a session."""

    def __init__(
        self,
        limits: OptionLimits,
        original: TransferOptions,
        cookies: SynCookies,
    ) -> None:
        self.limits = limits
        self.original = original
        self.cookies = cookies
        self.profiles: list[TransferOptions] = [original]
        self._profile_index: dict[TransferOptions, int] = {original: 0}
        self._last_used: list[float] = [0.0]
        self.stats = HandshakeStats()

    def _tag(self, profile: int) -> bytes:
        return b"" if profile == 0 else encode_options(self.profiles[profile])

    def _profile(self, options: TransferOptions, now: float) -> int | None:
        """The profile of ``options``: found, added, or in an evicted slot; None when full."""
        index = self._profile_index.get(options)
        if index is None:
            if len(self.profiles) <= MAX_PROFILES:
                index = len(self.profiles)
                self.profiles.append(options)
                self._last_used.append(now)
            else:
                index = self._evictable(now)
                if index is None:
                    return None
                self.stats.evicted += 1
                del self._profile_index[self.profiles[index]]
                self.profiles[index] = options
            self._profile_index[options] = index
        self._last_used[index] = now
        return index

    def _evictable(self, now: float) -> int | None:
        """The least recently used profile that no valid cookie can name, if any."""
        stale = now - 2 * self.cookies.slot_seconds
        index = min(range(1, len(self.profiles)), key=self._last_used.__getitem__)
        return index if self._last_used[index] < stale else None

    def answer_syn(self, data: bytes | memoryview, addr: Address, now: float) -> bytes | None:
        """The SYN-ACK for a well-formed SYN, or None (malformed: dropped)."""
        size = len(data)
        if size < RUDP_HEADER_LEN:
            self.stats.bad_syns += 1
            return None
        seq, _, flag, length = RUDP_HEADER.unpack_from(data, 0)
        if flag != SYN or length != size - RUDP_HEADER_LEN:
            self.stats.bad_syns += 1
            return None
        self.stats.syns += 1
        ack = (seq + 1) & 0xFFFFFFFF
        if length == 0:
            return RUDP_HEADER.pack(0, ack, ACK, 0)  # WIRE.md, byte for byte
        if not check_trailer(data):
            self.stats.bad_syns += 1
            return None
        try:
            requested = decode_options(bytes(data[RUDP_HEADER_LEN:-RUDP_CRC_TRAILER_LEN]))
        except OptionsError:
            self.stats.bad_syns += 1
            return None
        accepted = self.limits.clamp(requested)
        profile = self._profile(accepted, now)
        if profile is None:
            self.stats.table_full += 1
        payload = b"" if profile is None or profile == 0 else encode_options(accepted)
        cookie = self.cookies.make(addr, seq, profile or 0, now, self._tag(profile or 0))
        if payload:
            answer = add_trailer(
                RUDP_HEADER.pack(cookie, ack, ACK, len(payload) + RUDP_CRC_TRAILER_LEN) + payload
            )
            if len(answer) <= AMPLIFICATION_FACTOR * size:
                return answer
        self.stats.shrunk += 1
        cookie = self.cookies.make(addr, seq, 0, now)
        return RUDP_HEADER.pack(cookie, ack, ACK, 0)

    def accept_command(
        self, data: bytes | memoryview, addr: Address, now: float, factory: SessionFactory
    ) -> ServerSession | None:
        """A new session for a command with a valid cookie or none (legacy), else None.

        The caller then feeds ``data`` to the session as usual; the session
        checks the command itself (sequence number, CRC when negotiated).
        """
        size = len(data)
        if size < RUDP_HEADER_LEN:
            return None
        seq, cookie, flag, length = RUDP_HEADER.unpack_from(data, 0)
        if flag != DATA or length != size - RUDP_HEADER_LEN:
            return None
        self.stats.commands += 1
        isn = (seq - 1) & 0xFFFFFFFF
        if cookie == 0:
            profile, proven = 0, False
        else:
            claimed = cookie >> 24
            checked = None
            if claimed < len(self.profiles):
                checked = self.cookies.check(cookie, addr, isn, now, self._tag(claimed))
            if checked is None:
                self.stats.bad_cookies += 1
                return None
            profile, proven = checked, True
            self._last_used[profile] = now
        options = self.profiles[profile]
        negotiated = profile != 0
        payload = encode_options(options) if negotiated else b""
        session = factory()
        session.adopt(isn, options, negotiated, cookie, payload, proven=proven, now=now)
        session.unproven_budget = UNPROVEN_DATA_DATAGRAMS
        if proven:
            self.stats.proven += 1
        else:
            self.stats.legacy += 1
        return session


__all__ = [
    "AMPLIFICATION_FACTOR",
    "COOKIE_SLOT_S",
    "MAX_PROFILES",
    "UNPROVEN_DATA_DATAGRAMS",
    "Handshake",
    "SynCookies",
]
