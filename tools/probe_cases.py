"""Malformed-input cases for ``stacklab probe``: numbered, seeded, field-aware.

A case is pure data: what to send (datagrams for the UDP protocols, byte
segments for the framed TCP app protocol) plus how to send it (a gap between
segments for a slow drip, a stall that leaves a connection open mid-frame).
Nothing here touches a socket or a clock, so the cases can be tested alone and
the runner stays a thin loop.

Every case is a function of ``(protocol, seed, index)`` only:
:func:`generate_case` draws from ``random.Random(f"{seed}:{protocol}:{index}")``
and never needs the cases before it, which is what makes ``--replay K`` send
case K alone, byte for byte.  The first indexes walk a systematic list built
from the protocol definitions (boundary values of every RUDP header field,
read off the Scapy layer's ``fields_desc``; truncations at every header
offset; lying lengths; out-of-order handshakes; hostile FETCH commands; broken
JSON; broken framing); the indexes after it are random mutations (Scapy's
``fuzz()`` on the layers, bit flips, splices, insertions and deletions on
valid messages).
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from stacklab import wire

PROTOCOLS: Final = ("rudp", "dns", "dhcp", "app")
"""The protocols a probe can target (``--protocol``)."""

MAX_UDP_PAYLOAD: Final = 65507
"""The largest IPv4 UDP payload: an "oversized" datagram still has to be sendable."""


@dataclass(frozen=True, slots=True)
class ProbeContext:
    """What the cases aim at: the URL a valid FETCH asks for and the DNS name that exists."""

    url: str = wire.DEFAULT_URL
    name: str = wire.APP_DOMAIN


@dataclass(frozen=True, slots=True)
class Draft:
    """A case before it gets its number: what a builder returns.

    ``packets`` are UDP datagrams sent in order from one fresh socket, or, for
    the app protocol, the byte segments written to one fresh TCP connection.
    ``gap`` is the pause between segments (a slow drip, or a frame split
    across segments that must not be coalesced).  ``stall`` keeps the TCP
    connection open, unfinished, while the liveness check runs: a server that
    lets one stalled client block the others fails it.  ``half_close`` shuts
    the sending side after the last segment so the server sees the end.
    """

    kind: str
    detail: str
    packets: tuple[bytes, ...]
    gap: float = 0.0
    stall: bool = False
    half_close: bool = True


@dataclass(frozen=True, slots=True)
class Case:
    """One numbered, reproducible probe case (see :class:`Draft` for the fields)."""

    index: int
    protocol: str
    kind: str
    detail: str
    packets: tuple[bytes, ...]
    gap: float = 0.0
    stall: bool = False
    half_close: bool = True

    @property
    def size(self) -> int:
        """Total bytes the case sends."""
        return sum(len(p) for p in self.packets)


Builder = Callable[[random.Random, ProbeContext], Draft]


def case_rng(protocol: str, seed: int, index: int) -> random.Random:
    """The generator of one case: depends on nothing but its coordinates."""
    return random.Random(f"{seed}:{protocol}:{index}")


def generate_case(
    protocol: str, seed: int, index: int, context: ProbeContext | None = None
) -> Case:
    """Case ``index`` of ``protocol`` under ``seed``, built without generating any other case."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if index < 0:
        raise ValueError(f"case index must be >= 0, not {index}")
    ctx = context or ProbeContext()
    rng = case_rng(protocol, seed, index)
    systematic = systematic_builders(protocol, ctx)
    if index < len(systematic):
        draft = systematic[index](rng, ctx)
    else:
        draft = RANDOM_FAMILIES[protocol](rng, ctx)
    return Case(
        index,
        protocol,
        draft.kind,
        draft.detail,
        draft.packets,
        draft.gap,
        draft.stall,
        draft.half_close,
    )


def generate_cases(
    protocol: str, seed: int, count: int, context: ProbeContext | None = None, start: int = 0
) -> Iterator[Case]:
    """Cases ``start .. start+count-1`` in order (lazily: one at a time)."""
    for index in range(start, start + count):
        yield generate_case(protocol, seed, index, context)


def systematic_count(protocol: str, context: ProbeContext | None = None) -> int:
    """How many systematic cases come before the random mutations."""
    return len(systematic_builders(protocol, context or ProbeContext()))


def systematic_builders(protocol: str, ctx: ProbeContext) -> Sequence[Builder]:
    """The fixed, enumerated part of a protocol's cases (cached per context)."""
    return _systematic(protocol, ctx)


@cache
def _systematic(protocol: str, ctx: ProbeContext) -> tuple[Builder, ...]:
    makers: dict[str, Callable[[ProbeContext], list[Builder]]] = {
        "rudp": _rudp_systematic,
        "dns": _dns_systematic,
        "dhcp": _dhcp_systematic,
        "app": _app_systematic,
    }
    return tuple(makers[protocol](ctx))


def _fixed(
    kind: str,
    detail: str,
    *packets: bytes,
    gap: float = 0.0,
    stall: bool = False,
    half_close: bool = True,
) -> Builder:
    """A builder that ignores its random generator: a fully determined case."""
    draft = Draft(kind, detail, tuple(packets), gap, stall, half_close)
    return lambda _rng, _ctx: draft


# ---------------------------------------------------------------------------
# Field boundaries, from the layer definitions
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One header field as the probe sees it: name, byte size, whether it is an integer."""

    name: str
    size: int
    integer: bool


def rudp_fields() -> tuple[FieldSpec, ...]:
    """The RUDP header fields, in order, read off the Scapy layer's ``fields_desc``.

    The layer itself is derived from :data:`stacklab.wire.RUDP_HEADER_FIELDS`;
    reading the layer (rather than the table) means the probe follows what the
    dissector does.  Without the Scapy layers, the table is used directly.
    """
    table = {f.name: f for f in wire.RUDP_HEADER_FIELDS}
    layer = rudp_layer()
    names = [f.name for f in layer.fields_desc] if layer is not None else list(table)
    return tuple(
        FieldSpec(name, table[name].size, table[name].struct_code != "c")
        for name in names
        if name in table
    )


def rudp_layer() -> Any:
    """The Scapy ``RUDP`` layer class, or ``None`` when the layers cannot be imported."""
    try:
        from stacklab.layers.rudp import RUDP
    except ImportError:
        return None
    return RUDP


def int_boundaries(size: int) -> tuple[int, ...]:
    """0, 1, the sign bit, max-1 and max of an unsigned field of ``size`` bytes."""
    top = 2 ** (8 * size) - 1
    return (0, 1, 2 ** (8 * size - 1), top - 1, top)


FLAG_BOUNDARIES: Final = (b"\x00", b"\x01", b"\x7f", b"\x80", b"\xfe", b"\xff", b"s", b"X", b" ")
"""Flag bytes that are not one of S/A/D/F: control, high-bit, lower case, unknown letters."""


def _header(values: dict[str, Any], fields: Sequence[FieldSpec]) -> bytes:
    """Pack header fields in layer order; integer fields big-endian unsigned."""
    out = bytearray()
    for spec in fields:
        value = values[spec.name]
        if spec.integer:
            out += int(value).to_bytes(spec.size, "big")
        else:
            out += bytes(value)[: spec.size].ljust(spec.size, b"\x00")
    return bytes(out)


# ---------------------------------------------------------------------------
# Hostile FETCH commands, shared by the TCP app and RUDP cases
# ---------------------------------------------------------------------------


def fetch_commands(ctx: ProbeContext) -> list[tuple[str, bytes]]:
    """FETCH bodies that are not UTF-8, not URLs, point to forbidden places, or are no FETCH."""
    url = ctx.url
    host_path = url.split("://", 1)[-1]
    return [
        ("valid", f"FETCH {url}".encode()),
        ("not-utf8", b"FETCH http://127.0.0.1:8080/\xff\xfe\xfd"),
        ("not-utf8-overlong", b"FETCH \xc0\xaf\xc0\xaf"),
        ("not-utf8-lone-surrogate", b"FETCH http://\xed\xa0\x80/"),
        ("not-utf8-command", b"\xff\xfeF\x00E\x00T\x00C\x00H\x00"),
        ("latin1-url", "FETCH http://127.0.0.1:8080/caf\xe9".encode("latin-1")),
        ("empty", b""),
        ("fetch-only", b"FETCH"),
        ("fetch-space", b"FETCH "),
        ("not-a-url", b"FETCH not a url at all"),
        ("scheme-only", b"FETCH http://"),
        ("colons", b"FETCH ::::"),
        ("no-scheme", f"FETCH {host_path}".encode()),
        ("file-scheme", b"FETCH file:///etc/passwd"),
        ("gopher-scheme", b"FETCH gopher://127.0.0.1:8080/_GET%20/"),
        ("ftp-scheme", b"FETCH ftp://127.0.0.1/"),
        ("metadata", b"FETCH http://169.254.169.254/latest/meta-data/"),
        ("short-ip", b"FETCH http://127.1:8080/test_file.txt"),
        ("hex-ip", b"FETCH http://0x7f000001:8080/test_file.txt"),
        ("decimal-ip", b"FETCH http://2130706433:8080/test_file.txt"),
        ("ipv6-loopback", b"FETCH http://[::1]:8080/test_file.txt"),
        ("other-port", b"FETCH http://127.0.0.1:22/"),
        ("userinfo", b"FETCH http://127.0.0.1:8080@169.254.169.254/"),
        ("outside-host", b"FETCH http://example.com/"),
        ("crlf-injection", f"FETCH {url}\r\nHost: evil\r\n\r\n".encode()),
        ("nul-byte", f"FETCH {url}\x00.html".encode()),
        ("path-traversal", b"FETCH http://127.0.0.1:8080/../../../../etc/passwd"),
        ("huge-port", b"FETCH http://127.0.0.1:99999/"),
        ("lowercase", f"fetch {url}".encode()),
        ("http-verb", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("double-space", f"FETCH  {url}".encode()),
        ("tab", f"FETCH\t{url}".encode()),
        ("trailing-newline", f"FETCH {url}\n".encode()),
        ("long-url", ("FETCH http://127.0.0.1:8080/" + "a" * 8000).encode()),
        ("utf8-path", f"FETCH {url}/caf\u00e9-\u2603".encode()),
        ("utf8-host", "FETCH http://b\u00fccher.example/".encode()),
        ("space-in-url", f"FETCH {url} extra words".encode()),
    ]


# ---------------------------------------------------------------------------
# Byte-level mutations (seeded)
# ---------------------------------------------------------------------------


def mutate(data: bytes, rng: random.Random, rounds: int | None = None) -> tuple[bytes, str]:
    """Apply a few random flips, overwrites, insertions, deletions or cuts; say which."""
    buf = bytearray(data)
    done = []
    for _ in range(rounds if rounds is not None else rng.randint(1, 4)):
        op = rng.choice(("flip", "byte", "insert", "delete", "dup", "truncate"))
        pos = rng.randrange(len(buf) + 1)
        if op == "flip" and buf:
            pos = min(pos, len(buf) - 1)
            bit = rng.randrange(8)
            buf[pos] ^= 1 << bit
            done.append(f"flip@{pos}.{bit}")
        elif op == "byte" and buf:
            pos = min(pos, len(buf) - 1)
            buf[pos] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
            done.append(f"byte@{pos}")
        elif op == "insert":
            chunk = rng.randbytes(rng.randint(1, 16))
            buf[pos:pos] = chunk
            done.append(f"insert@{pos}+{len(chunk)}")
        elif op == "delete" and buf:
            n = rng.randint(1, max(1, min(16, len(buf) - pos)))
            del buf[pos : pos + n]
            done.append(f"delete@{pos}-{n}")
        elif op == "dup" and buf:
            start = rng.randrange(len(buf))
            piece = buf[start : start + rng.randint(1, 32)]
            buf[pos:pos] = piece
            done.append(f"dup@{pos}+{len(piece)}")
        elif op == "truncate":
            del buf[pos:]
            done.append(f"truncate@{pos}")
    return bytes(buf), ",".join(done) or "none"


@contextmanager
def seeded_global_random(rng: random.Random) -> Iterator[None]:
    """Run Scapy's ``fuzz()`` reproducibly.

    Scapy's volatile values draw from the module-level ``random``; seed it from
    the case's own generator for the duration and restore the previous state,
    so the case is reproducible and nobody else's randomness is disturbed.
    """
    state = random.getstate()
    random.seed(rng.getrandbits(64))
    try:
        yield
    finally:
        random.setstate(state)


# ---------------------------------------------------------------------------
# RUDP
# ---------------------------------------------------------------------------


def _rudp(
    seq: int, ack: int, flag: bytes, payload: bytes = b"", length: int | None = None
) -> bytes:
    return wire.pack_rudp(seq, ack, flag, payload, length)


def _syn(isn: int = wire.ORIGINAL_ISN, payload: bytes = b"") -> bytes:
    return _rudp(isn, 0, wire.Flag.SYN.value, payload)


def _cmd(ctx: ProbeContext, isn: int = wire.ORIGINAL_ISN, body: bytes | None = None) -> bytes:
    command = f"FETCH {ctx.url}".encode() if body is None else body
    return _rudp((isn + 1) & wire.RUDP_MAX_SEQ, 0, wire.Flag.DATA.value, command)


def _rudp_systematic(ctx: ProbeContext) -> list[Builder]:
    fields = rudp_fields()
    command = f"FETCH {ctx.url}".encode()
    bases: dict[str, tuple[dict[str, Any], bytes]] = {
        "SYN": ({"seq": 100, "ack": 0, "flag": b"S", "len": 0}, b""),
        "DATA": ({"seq": 101, "ack": 0, "flag": b"D", "len": len(command)}, command),
        "ACK": ({"seq": 0, "ack": 101, "flag": b"A", "len": 0}, b""),
    }
    out: list[Builder] = []
    # Boundary values of every header field, on each kind of base datagram.
    for base_name, (values, payload) in bases.items():
        for spec in fields:
            candidates: Sequence[Any] = (
                int_boundaries(spec.size)
                if spec.integer
                else (*FLAG_BOUNDARIES, *(f.value for f in wire.Flag))
            )
            for value in candidates:
                header = _header({**values, spec.name: value}, fields)
                shown = value if spec.integer else wire.flag_letter(value)
                out.append(
                    _fixed(
                        f"rudp.boundary.{spec.name}",
                        f"{base_name} with {spec.name}={shown}",
                        header + payload,
                    )
                )
    # Length fields that lie about the payload.
    for label, length in (
        ("shorter", len(command) - 1),
        ("longer", len(command) + 1),
        ("zero", 0),
        ("65535", wire.RUDP_MAX_LEN),
        ("half", len(command) // 2),
    ):
        out.append(
            _fixed(
                "rudp.lying-length",
                f"command DATA len={length} ({label}) for a {len(command)}-byte payload",
                _syn(),
                _rudp(101, 0, b"D", command, length),
            )
        )
    out += [
        _fixed(
            "rudp.lying-length",
            "SYN len=0 with 40 payload bytes",
            _rudp(100, 0, b"S", b"x" * 40, 0),
        ),
        _fixed(
            "rudp.lying-length", "SYN len=65535 without payload", _rudp(100, 0, b"S", b"", 65535)
        ),
    ]
    # Truncations at every offset of the 11-byte header.
    for base_name, datagram in (("SYN", _syn()), ("DATA", _cmd(ctx)), ("ACK", _rudp(0, 101, b"A"))):
        for cut in range(wire.RUDP_HEADER_LEN):
            out.append(_fixed("rudp.truncated", f"{base_name} cut to {cut} bytes", datagram[:cut]))
    # Oversized datagrams.
    for size in (wire.ORIGINAL_RECV_BUFFER + 1, 9000, MAX_UDP_PAYLOAD):
        body = b"FETCH " + b"A" * (size - wire.RUDP_HEADER_LEN - 6)
        out.append(
            _fixed(
                "rudp.oversized",
                f"SYN then a {size}-byte command",
                _syn(),
                _rudp(101, 0, b"D", body, min(len(body), wire.RUDP_MAX_LEN)),
            )
        )
    out.append(
        _fixed(
            "rudp.oversized",
            f"SYN of {MAX_UDP_PAYLOAD} bytes",
            _syn(payload=b"{" * (MAX_UDP_PAYLOAD - wire.RUDP_HEADER_LEN)),
        )
    )
    # Sequence and ack numbers out of window or wrapping.
    top = wire.RUDP_MAX_SEQ
    out += [
        _fixed("rudp.seq", "SYN isn=2^32-1, command seq wraps to 0", _syn(top), _cmd(ctx, top)),
        _fixed("rudp.seq", "SYN isn=2^32-2, command seq=2^32-1", _syn(top - 1), _cmd(ctx, top - 1)),
        _fixed(
            "rudp.seq", "command seq far ahead of the ISN", _syn(), _rudp(10_000, 0, b"D", command)
        ),
        _fixed("rudp.seq", "command seq behind the ISN", _syn(), _rudp(50, 0, b"D", command)),
        _fixed(
            "rudp.ack", "ACK ack=2^32-1 after the command", _syn(), _cmd(ctx), _rudp(0, top, b"A")
        ),
        _fixed(
            "rudp.ack", "ACK ack=1000 (beyond any chunk)", _syn(), _cmd(ctx), _rudp(0, 1000, b"A")
        ),
        _fixed("rudp.ack", "ACK ack=0 five times", _syn(), _cmd(ctx), *[_rudp(0, 0, b"A")] * 5),
        _fixed("rudp.ack", "ACK of a FIN never sent", _syn(), _cmd(ctx), _rudp(0, 2, b"A")),
        _fixed(
            "rudp.ack", "ACK of chunk 1 ten times", _syn(), _cmd(ctx), *[_rudp(0, 1, b"A")] * 10
        ),
    ]
    # Handshakes out of order.
    out += [
        _fixed("rudp.order", "command without a SYN", _cmd(ctx)),
        _fixed("rudp.order", "FIN first", _rudp(100, 0, b"F")),
        _fixed("rudp.order", "ACK first", _rudp(0, 101, b"A")),
        _fixed("rudp.order", "SYN, FIN, then the command", _syn(), _rudp(101, 0, b"F"), _cmd(ctx)),
        _fixed("rudp.order", "three SYNs", _syn(), _syn(), _syn()),
        _fixed("rudp.order", "SYN then FIN", _syn(), _rudp(101, 0, b"F")),
        _fixed("rudp.order", "SYN, command, SYN again", _syn(), _cmd(ctx), _syn()),
        _fixed(
            "rudp.order",
            "SYN, command, a new ISN and its command",
            _syn(),
            _cmd(ctx),
            _syn(500),
            _cmd(ctx, 500),
        ),
        _fixed("rudp.order", "command sent twice", _syn(), _cmd(ctx), _cmd(ctx)),
        _fixed(
            "rudp.order",
            "two different commands",
            _syn(),
            _cmd(ctx),
            _rudp(102, 0, b"D", b"FETCH http://x/"),
        ),
        _fixed(
            "rudp.order",
            "client DATA chunk after the command",
            _syn(),
            _cmd(ctx),
            _rudp(1, 0, b"D", b"chunk"),
        ),
        _fixed("rudp.order", "SYN with ack set", _rudp(100, 12345, b"S")),
        _fixed(
            "rudp.order", "SYN-ACK sent to the server", _rudp(0, 101, b"A"), _rudp(0, 101, b"S")
        ),
    ]
    # SYN payloads: the stacklab options extension, broken in every way.
    for label, payload in _json_payloads():
        out.append(_fixed("rudp.syn-options", f"SYN options: {label}", _syn(payload=payload)))
    for label, payload in (
        ("chunk 0", b'{"chunk_size": 0}'),
        ("chunk -1", b'{"chunk_size": -1}'),
        ("chunk huge", b'{"chunk_size": 1000000000}'),
        ("window 0", b'{"max_window": 0}'),
        ("window 2^32", b'{"max_window": 4294967296}'),
        ("window string", b'{"max_window": "5"}'),
        ("integrity string", b'{"integrity": "yes"}'),
        ("ack_every 0", b'{"ack_every": 0}'),
    ):
        out.append(
            _fixed(
                "rudp.syn-options",
                f"SYN options {label}, then the command",
                _syn(payload=payload),
                _cmd(ctx),
            )
        )
    # Hostile FETCH commands after a proper handshake.
    for label, body in fetch_commands(ctx):
        out.append(_fixed("rudp.command", f"command {label}", _syn(), _cmd(ctx, body=body)))
    return out


def _rudp_random(rng: random.Random, ctx: ProbeContext) -> Draft:
    family = rng.choice(("fuzz", "fuzz", "mutate", "mutate", "sequence"))
    if family == "fuzz":
        return _rudp_fuzz(rng, ctx)
    if family == "mutate":
        base = rng.choice((_syn(), _cmd(ctx), _rudp(0, 1, b"A"), _rudp(2, 0, b"F")))
        data, how = mutate(base, rng)
        pre = (_syn(),) if rng.random() < 0.5 else ()
        return Draft("rudp.mutate", f"{len(pre)} SYN + mutated datagram ({how})", (*pre, data))
    pool = [
        _syn(rng.choice((100, 0, wire.RUDP_MAX_SEQ, rng.getrandbits(32)))),
        _cmd(ctx),
        _rudp(0, rng.getrandbits(32) if rng.random() < 0.3 else rng.randrange(5), b"A"),
        _rudp(rng.randrange(5), 0, b"F"),
        _rudp(rng.randrange(200), 0, b"D", rng.randbytes(rng.randrange(64))),
    ]
    picked = [rng.choice(pool) for _ in range(rng.randint(2, 6))]
    return Draft("rudp.sequence", f"{len(picked)} datagrams in random order", tuple(picked))


def _rudp_fuzz(rng: random.Random, ctx: ProbeContext) -> Draft:
    flag = rng.choice([f.value for f in wire.Flag])
    if flag == b"D" and rng.random() < 0.5:
        payload = f"FETCH {ctx.url}".encode()
    else:
        payload = rng.randbytes(rng.randrange(32))
    pre = (_syn(),) if rng.random() < 0.3 else ()
    layer = rudp_layer()
    if layer is None:  # without the Scapy layers: random header values by hand
        datagram = (
            wire.RUDP_HEADER.pack(
                rng.getrandbits(32),
                rng.getrandbits(32),
                bytes([rng.randrange(256)]),
                rng.getrandbits(16),
            )
            + payload
        )
    else:
        from scapy.packet import Raw, fuzz, raw

        # fuzz() randomises the fields left at their defaults: mostly keep a
        # known flag (to reach deeper state), sometimes let the flag byte go wild.
        header = layer(flag=flag) if rng.random() < 0.7 else layer()
        with seeded_global_random(rng):
            datagram = bytes(raw(fuzz(header / Raw(payload) if payload else header)))
    if len(datagram) >= wire.RUDP_HEADER_LEN:
        head = wire.unpack_rudp(datagram)[0]
        detail = (
            f"fuzz(RUDP) seq={head.seq} ack={head.ack} flag={head.flag_letter} len={head.length}"
        )
    else:
        detail = f"fuzz(RUDP) of {len(datagram)} bytes"
    return Draft("rudp.fuzz", detail, (*pre, datagram))


# ---------------------------------------------------------------------------
# JSON (DNS and DHCP)
# ---------------------------------------------------------------------------

WRONG_TYPES: Final[tuple[tuple[str, Any], ...]] = (
    ("null", None),
    ("true", True),
    ("int", 0),
    ("negative", -1),
    ("big-int", 2**64),
    ("float", 1.5),
    ("list", ["x"]),
    ("object", {"x": 1}),
    ("empty-string", ""),
    ("huge-string", "a" * 60000),
)


@cache
def _json_payloads() -> tuple[tuple[str, bytes], ...]:
    """JSON that is invalid, not an object, deeply nested, huge, or not UTF-8."""
    return (
        ("empty", b""),
        ("whitespace", b"   \n\t "),
        ("open-brace", b"{"),
        ("close-brace", b"}"),
        ("unterminated-string", b'{"domain": "abc'),
        ("missing-value", b'{"domain": }'),
        ("trailing-comma", b'{"domain": "x",}'),
        ("single-quotes", b"{'domain': 'x'}"),
        ("array", b"[]"),
        ("string", b'"my-app-server.local"'),
        ("number", b"1"),
        ("null", b"null"),
        ("true", b"true"),
        ("nan", b'{"domain": NaN}'),
        ("infinity-float", b'{"domain": 1e999999}'),
        ("huge-int-digits", b'{"domain": ' + b"9" * 5000 + b"}"),
        ("deep-array", b'{"domain": ' + b"[" * 30000 + b"]" * 30000 + b"}"),
        ("deep-object", b'{"a":' * 10000 + b"1" + b"}" * 10000),
        ("invalid-utf8", b'{"domain": "\xff\xfe\xfd"}'),
        ("invalid-utf8-key", b'{"\xc3\x28": 1}'),
        ("lone-surrogate-escape", b'{"domain": "\\ud800"}'),
        ("nul-in-string", b'{"domain": "a\\u0000b"}'),
        ("utf8-bom", b'\xef\xbb\xbf{"domain": "my-app-server.local"}'),
        ("utf16", '{"domain": "my-app-server.local"}'.encode("utf-16")),
        ("duplicate-keys", b'{"domain": 1, "domain": "my-app-server.local"}'),
        ("trailing-garbage", b'{"domain": "my-app-server.local"} garbage'),
        ("two-objects", b'{"domain": "a"}{"domain": "b"}'),
        ("many-keys", json.dumps({f"k{i}": i for i in range(4000)}).encode()),
        ("huge-key", b'{"' + b"k" * 60000 + b'": 1}'),
        ("binary-garbage", bytes(range(256))),
    )


def _json_key_cases(kind: str, base: dict[str, Any]) -> list[Builder]:
    """Wrong types for every well-known JSON key (the JSON layers' named fields)."""
    out: list[Builder] = []
    for key in wire.JSON_WELL_KNOWN_KEYS:
        for label, value in WRONG_TYPES:
            text = json.dumps({**base, key: value}).encode()
            out.append(_fixed(kind, f"{key}={label}", text))
    return out


def _dns_systematic(ctx: ProbeContext) -> list[Builder]:
    query = json.dumps({"domain": ctx.name}).encode()
    out: list[Builder] = [
        _fixed("dns.query", "the valid query", query),
        _fixed("dns.query", "unknown name", b'{"domain": "no-such-name.invalid"}'),
        _fixed("dns.query", "upper-case name", json.dumps({"domain": ctx.name.upper()}).encode()),
        _fixed("dns.query", "no domain key", b'{"name": "x"}'),
        _fixed("dns.query", "empty object", b"{}"),
        _fixed("dns.query", "trailing dot", json.dumps({"domain": ctx.name + "."}).encode()),
        _fixed("dns.query", "extra keys", json.dumps({"domain": ctx.name, "x": [1, 2]}).encode()),
        _fixed("dns.query", "leading spaces", b"   " + query),
        _fixed(
            "dns.oversized",
            f"object of {MAX_UDP_PAYLOAD} bytes",
            b'{"domain": "' + b"a" * (MAX_UDP_PAYLOAD - 14) + b'"}',
        ),
    ]
    for label, payload in _json_payloads():
        out.append(_fixed("dns.json", label, payload))
    out += _json_key_cases("dns.types", {"domain": ctx.name})
    out += _dns_binary(ctx)
    return out


def _dns_binary(ctx: ProbeContext) -> list[Builder]:
    """Wire-format DNS: a valid A query, and broken headers, counts and compression loops."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in ctx.name.split(".") if p) + b"\x00"
    header = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    a_in = struct.pack("!HH", 1, 1)
    query = header + qname + a_in
    out: list[Builder] = [
        _fixed("dns.binary", "valid A query", query),
        _fixed("dns.binary", "AAAA query", header + qname + struct.pack("!HH", 28, 1)),
        _fixed(
            "dns.binary",
            "qdcount=65535",
            struct.pack("!HHHHHH", 1, 0x0100, 65535, 0, 0, 0) + qname + a_in,
        ),
        _fixed("dns.binary", "compression pointer loop", header + b"\xc0\x0c" + a_in),
        _fixed("dns.binary", "label too long", header + b"\x3f" + b"a" * 70 + b"\x00" + a_in),
        _fixed(
            "dns.binary",
            "a response, not a query",
            struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + qname + a_in,
        ),
        _fixed(
            "dns.binary", "opcode 15", struct.pack("!HHHHHH", 1, 0x7800, 1, 0, 0, 0) + qname + a_in
        ),
    ]
    for cut in range(1, 13):
        out.append(_fixed("dns.binary", f"header cut to {cut} bytes", query[:cut]))
    return out


def _json_random(kind: str, valid: Sequence[bytes]) -> Builder:
    def build(rng: random.Random, ctx: ProbeContext) -> Draft:
        family = rng.choice(("mutate", "mutate", "splice", "types", "fuzz"))
        if family == "fuzz":
            data = _json_fuzz(kind, rng, valid)
            return Draft(f"{kind}.fuzz", f"fuzz() of the JSON layer, {len(data)} bytes", (data,))
        if family == "mutate":
            data, how = mutate(rng.choice(valid), rng)
            return Draft(f"{kind}.mutate", how, (data,))
        if family == "splice":
            (la, a), (lb, b) = rng.choice(_json_payloads()), rng.choice(_json_payloads())
            joined = a[: rng.randrange(len(a) + 1)] + b[rng.randrange(len(b) + 1) :]
            return Draft(f"{kind}.splice", f"{la} spliced with {lb}", (joined[:MAX_UDP_PAYLOAD],))
        value = _random_json(rng, depth=0)
        key = rng.choice(wire.JSON_WELL_KNOWN_KEYS)
        text = json.dumps({key: value} if rng.random() < 0.7 else value).encode()
        return Draft(
            f"{kind}.random-json", f"random value under {key!r}", (text[:MAX_UDP_PAYLOAD],)
        )

    return build


def _json_fuzz(kind: str, rng: random.Random, valid: Sequence[bytes]) -> bytes:
    """Scapy's ``fuzz()`` on the JSON message layer: its ``load`` becomes random bytes."""
    try:
        from stacklab.layers.jsonmsg import DHCPJson, DNSJson
    except ImportError:  # without the Scapy layers: random bytes of a random length
        return rng.randbytes(rng.randrange(128))
    from scapy.packet import fuzz, raw

    layer = DNSJson if kind == "dns" else DHCPJson
    with seeded_global_random(rng):
        data = bytes(raw(fuzz(layer())))
    # Half the time keep a valid message's start, so the fuzz lands past the first byte.
    if rng.random() < 0.5:
        base = rng.choice(valid)
        data = base[: rng.randrange(len(base) + 1)] + data
    return data[:MAX_UDP_PAYLOAD]


def _random_json(rng: random.Random, depth: int) -> Any:
    choice = rng.randrange(7 if depth < 4 else 5)
    if choice == 0:
        return None
    if choice == 1:
        return rng.random() < 0.5
    if choice == 2:
        return rng.choice((0, -1, 2**31, 2**63, rng.getrandbits(16)))
    if choice == 3:
        return rng.random() * 10 ** rng.randint(-5, 300)
    if choice == 4:
        return "".join(
            chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x80, 0xD7FF))))
            for _ in range(rng.randrange(40))
        )
    if choice == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(rng.randrange(100)): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def _dhcp_systematic(ctx: ProbeContext) -> list[Builder]:
    discover = wire.DHCP_DISCOVER
    out: list[Builder] = [
        _fixed("dhcp.discover", "the bare keyword", discover),
        _fixed("dhcp.discover", "lower case", discover.lower()),
        _fixed("dhcp.discover", "trailing newline", discover + b"\n"),
        _fixed("dhcp.discover", "trailing NUL", discover + b"\x00"),
        _fixed("dhcp.discover", "doubled", discover * 2),
        _fixed("dhcp.discover", "with suffix", discover + b"X"),
        _fixed(
            "dhcp.discover",
            f"padded to {MAX_UDP_PAYLOAD} bytes",
            discover + b" " * (MAX_UDP_PAYLOAD - len(discover)),
        ),
        _fixed("dhcp.json", "JSON DISCOVER", b'{"type": "DISCOVER"}'),
        _fixed(
            "dhcp.json",
            "JSON DISCOVER with client id",
            b'{"type": "DISCOVER", "client_id": "probe"}',
        ),
        _fixed("dhcp.json", "REQUEST without fields", b'{"type": "REQUEST"}'),
        _fixed(
            "dhcp.json",
            "REQUEST a malformed address",
            b'{"type": "REQUEST", "client_id": "probe", "requested_ip": "999.1.1.1"}',
        ),
        _fixed(
            "dhcp.json",
            "REQUEST outside the pool",
            b'{"type": "REQUEST", "client_id": "probe", "requested_ip": "8.8.8.8"}',
        ),
        _fixed(
            "dhcp.json",
            "RELEASE without a lease",
            b'{"type": "RELEASE", "client_id": "nobody", "ip": "127.0.0.2"}',
        ),
        _fixed("dhcp.json", "unknown type", b'{"type": "BOGUS"}'),
        _fixed(
            "dhcp.json",
            "an OFFER sent to the server",
            b'{"type": "OFFER", "assigned_ip": "127.0.0.2"}',
        ),
    ]
    for cut in range(len(discover)):
        out.append(_fixed("dhcp.truncated", f"DISCOVER cut to {cut} bytes", discover[:cut]))
    for label, payload in _json_payloads():
        out.append(_fixed("dhcp.broken-json", label, payload))
    out += _json_key_cases("dhcp.types", {"type": "DISCOVER", "client_id": "probe-types"})
    out += _json_key_cases("dhcp.types", {"type": "REQUEST", "client_id": "probe-types"})
    return out


# ---------------------------------------------------------------------------
# App protocol over TCP (10-digit framing)
# ---------------------------------------------------------------------------


def _app_systematic(ctx: ProbeContext) -> list[Builder]:
    body = f"FETCH {ctx.url}".encode()
    frame = wire.encode_frame(body)
    out: list[Builder] = []
    for label, command in fetch_commands(ctx):
        out.append(_fixed("app.command", f"command {label}", wire.encode_frame(command)))
    for label, prefix in (
        ("letters", b"abcdefghij"),
        ("spaces", b" " * 8 + b"41"),
        ("negative", b"-000000041"),
        ("plus", b"+000000041"),
        ("hex", b"0x00000029"),
        ("nul", b"\x00" * 10),
        ("unicode-digit", "0000000４".encode()),
        ("float", b"00000041.0"),
        ("high-bit", b"\xff" * 10),
    ):
        out.append(_fixed("app.prefix", f"prefix {label}", prefix + body))
    size = len(body)
    for label, length in (
        ("shorter", size - 5),
        ("longer", size + 5),
        ("zero", 0),
        ("one", 1),
        ("65535", 65535),
        ("max", wire.FRAME_MAX_BODY),
    ):
        out.append(
            _fixed(
                "app.length",
                f"length {length} ({label}) for a {size}-byte body",
                wire.frame_prefix(length) + body,
            )
        )
    out += [
        _fixed("app.length", "prefix only, then close", frame[: wire.FRAME_PREFIX_LEN]),
        _fixed("app.length", "two frames in one segment", frame + frame),
        _fixed("app.length", "connect and close at once", b""),
        _fixed("app.oversized", "1 MiB command", wire.encode_frame(b"FETCH " + b"x" * (1 << 20))),
    ]
    # A valid frame split at every byte (two segments, a pause between them).
    for cut in range(1, len(frame)):
        out.append(_fixed("app.split", f"split at byte {cut}", frame[:cut], frame[cut:], gap=0.002))
    out.append(
        _fixed(
            "app.drip",
            "one byte at a time",
            *[frame[i : i + 1] for i in range(len(frame))],
            gap=0.003,
        )
    )
    # Connections that stall mid-frame while the liveness check runs.
    for label, cut in (
        ("before sending anything", 0),
        ("mid-prefix", 5),
        ("after the prefix", 10),
        ("mid-body", 10 + size // 2),
    ):
        out.append(_fixed("app.stall", f"stall {label}", frame[:cut], stall=True, half_close=False))
    return out


def _app_random(rng: random.Random, ctx: ProbeContext) -> Draft:
    body = f"FETCH {ctx.url}".encode()
    frame = wire.encode_frame(body)
    family = rng.choice(("mutate", "mutate", "split", "command", "fuzz"))
    if family == "mutate":
        data, how = mutate(frame, rng)
        return Draft("app.mutate", how, (data,))
    if family == "split":
        cuts = sorted(rng.sample(range(1, len(frame)), rng.randint(1, 6)))
        pieces = [frame[a:b] for a, b in zip([0, *cuts], [*cuts, len(frame)], strict=True)]
        return Draft("app.split", f"split at {cuts}", tuple(pieces), gap=0.002)
    if family == "command":
        label, command = rng.choice(fetch_commands(ctx))
        data, how = mutate(command, rng, rounds=1)
        return Draft("app.command", f"{label} mutated ({how})", (wire.encode_frame(data),))
    data = _app_fuzz(rng, len(body))
    return Draft("app.fuzz", f"fuzz(AppFrame) prefix {data[:10]!r}", (data,))


def _app_fuzz(rng: random.Random, size: int) -> bytes:
    """A frame from Scapy's ``fuzz()`` on the ``AppFrame`` layer: random body, maybe a lying length."""
    try:
        from stacklab.layers.app import AppFrame
    except ImportError:  # without the Scapy layers: a random body behind a true prefix
        return wire.encode_frame(rng.randbytes(rng.randrange(64)))
    from scapy.packet import fuzz, raw

    lie = rng.choice((None, None, 0, 1, size, 65535))
    frame = AppFrame() if lie is None else AppFrame(len=lie)
    with seeded_global_random(rng):
        return bytes(raw(fuzz(frame)))


RANDOM_FAMILIES: Final[dict[str, Builder]] = {
    "rudp": _rudp_random,
    "dns": _json_random(
        "dns",
        (json.dumps({"domain": wire.APP_DOMAIN}).encode(), b'{"domain": "no-such.invalid"}', b"{}"),
    ),
    "dhcp": _json_random(
        "dhcp",
        (wire.DHCP_DISCOVER, b'{"type": "DISCOVER", "client_id": "probe"}', b'{"type": "REQUEST"}'),
    ),
    "app": _app_random,
}
