"""Stateless SYN handling: SYN cookies and the anti-amplification budget, sans-I/O.

A SYN allocates nothing.  :meth:`Handshake.answer_syn` computes the SYN-ACK
from the SYN alone, so a flood of SYNs from spoofed addresses costs the
server CPU and an answer each, never memory.  Session state is created only
by the command (:meth:`Handshake.accept_command`).

Cookies.  A plain SYN (the original client's) is answered exactly as in
WIRE.md, ``seq=0``.  A SYN carrying a stacklab options offer gets a cookie in
the SYN-ACK's ``seq`` field: ``profile (8 bits) | MAC (24 bits)`` where the
MAC is a keyed BLAKE2b of the time slot, the client's address and port, its
ISN and the profile.  The profile indexes a small, bounded, append-only table
of accepted option sets (at most :data:`MAX_PROFILES`; when it is full a new
combination is answered with the original options, i.e. an empty SYN-ACK,
which a stacklab client takes as "fall back to the original options").  A
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


class SynCookies:
    """Keyed cookies over (slot, address, port, ISN, profile); the key comes from the caller."""

    def __init__(self, secret: bytes, slot_seconds: float = COOKIE_SLOT_S) -> None:
        if len(secret) < 16:
            raise ValueError("the cookie secret must be at least 16 bytes")
        self._secret = secret[:64]
        self.slot_seconds = slot_seconds

    def _mac(self, slot: int, addr: Address, isn: int, profile: int) -> int:
        h = hashlib.blake2b(key=self._secret, digest_size=4)
        h.update(f"{slot}|{addr[0]}|{addr[1]}|{isn}|{profile}".encode())
        return int.from_bytes(h.digest(), "big") & _MAC_MASK

    def make(self, addr: Address, isn: int, profile: int, now: float) -> int:
        slot = int(now // self.slot_seconds)
        return (profile << 24) | self._mac(slot, addr, isn, profile)

    def check(self, cookie: int, addr: Address, isn: int, now: float) -> int | None:
        """The profile of a valid cookie for this address and ISN, else None."""
        profile = cookie >> 24
        mac = cookie & _MAC_MASK
        slot = int(now // self.slot_seconds)
        for s in (slot, slot - 1):
            if self._mac(s, addr, isn, profile) == mac:
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
        self.stats = HandshakeStats()

    def _profile(self, options: TransferOptions) -> int | None:
        index = self._profile_index.get(options)
        if index is None and len(self.profiles) <= MAX_PROFILES:
            index = len(self.profiles)
            self.profiles.append(options)
            self._profile_index[options] = index
        return index

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
        profile = self._profile(accepted)
        payload = b"" if profile is None or profile == 0 else encode_options(accepted)
        cookie = self.cookies.make(addr, seq, profile or 0, now)
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
            checked = self.cookies.check(cookie, addr, isn, now)
            if checked is None or checked >= len(self.profiles):
                self.stats.bad_cookies += 1
                return None
            profile, proven = checked, True
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
