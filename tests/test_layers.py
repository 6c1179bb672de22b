"""The Scapy layers: build to literal bytes, dissect again, bindings restored."""

from __future__ import annotations

import itertools

import pytest
from scapy.compat import raw
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Padding, Raw
from scapy.utils import rdpcap

from stacklab.analysis.pcapio import read_packets
from stacklab.layers import (
    RUDP,
    AppFrame,
    DHCPJson,
    DNSJson,
    app_frames,
    bind_ports,
    current_ports,
    scapy_bindings,
)
from stacklab.layers.bindings import RUDPGuess
from stacklab.wire import RUDP_HEADER_FIELDS, Flag, Ports, rudp_trailer_ok

from conftest import REPO, seed_capture

SYN = b"\x00\x00\x00d\x00\x00\x00\x00S\x00\x00"
COMMAND = b"FETCH http://127.0.0.1:8080/test_file.txt"


def _udp(sport: int, dport: int, payload: bytes) -> IP:
    """An IPv4/UDP packet built and dissected again from bytes (no crafted layers left)."""
    return IP(raw(IP(src="127.0.0.1", dst="127.0.0.3") / UDP(sport=sport, dport=dport) / payload))


# -- RUDP ---------------------------------------------------------------------


def test_rudp_fields_follow_the_wire_table() -> None:
    header = RUDP.fields_desc[: len(RUDP_HEADER_FIELDS)]
    assert [f.name for f in header] == [f.name for f in RUDP_HEADER_FIELDS]
    assert [f.sz for f in header] == [f.size for f in RUDP_HEADER_FIELDS]
    # then the extensions, present only when the datagram has them
    assert [f.name for f in RUDP.fields_desc[len(header) :]] == ["options", "crc32c"]


def test_flag_compares_equal_to_letter_name_enum_and_value() -> None:
    flag = RUDP(SYN).flag
    for same in ("S", "SYN", Flag.SYN, 0x53, b"S"):
        assert flag == same, same
    for other in ("A", "nonsense", 0x41, b"A"):
        assert flag != other and flag.__eq__(other) is False, other
    assert RUDP(flag="D").flag == "D" and hash(RUDP(flag="D").flag) == hash(b"D")


def test_plain_datagrams_have_no_extension_fields() -> None:
    pkt = RUDP(raw(RUDP(seq=1, flag="D") / b"abcd"))
    assert pkt.options is None and pkt.crc32c is None and pkt[Raw].load == b"abcd"
    assert "crc32c" not in pkt.show(dump=True) and "options" not in pkt.show(dump=True)


def test_options_and_crc32c_trailer_as_fields_round_trip() -> None:
    syn = RUDP(seq=100, flag="S", options=b'{"v":1,"window":256}').seal()
    data = raw(syn)
    assert data[11:-4] == b'{"v":1,"window":256}' and len(data) == 11 + 20 + 4
    assert rudp_trailer_ok(data)  # the codec's own check agrees
    again = RUDP(data)
    assert again.options == b'{"v":1,"window":256}' and again.crc32c == syn.crc32c
    assert again.options_json() == {"v": 1, "window": 256}
    assert raw(again) == data
    chunk = raw((RUDP(seq=3, flag="D") / b"hello").seal())
    assert chunk[11:16] == b"hello" and rudp_trailer_ok(chunk)  # trailer last on the wire
    dissected = RUDP(chunk)
    assert dissected[Raw].load == b"hello" and dissected.len == 9 and raw(dissected) == chunk
    bad = RUDP(seq=3, flag="D", crc32c=0xDEADBEEF) / b"hello"
    assert raw(bad)[-4:] == bytes.fromhex("deadbeef") and not rudp_trailer_ok(raw(bad))


def test_negotiated_capture_dissects_to_extension_fields_and_back() -> None:
    path = REPO / "captures" / "rudp-negotiated.pcapng"
    datagrams = [
        p.payload for p in read_packets(path) if p.proto == "udp" and 2122 in (p.sport, p.dport)
    ]
    for datagram in datagrams:
        pkt = RUDP(datagram)
        assert raw(pkt) == datagram
        assert pkt.crc32c is not None  # every datagram of this session carries a trailer
    syn, synack = RUDP(datagrams[0]), RUDP(datagrams[1])
    assert syn.flag == "S" and syn.options_json() is not None
    assert synack.flag == "A" and synack.options_json() == syn.options_json()


def test_json_layers_show_their_parsed_fields() -> None:
    shown = DHCPJson(b'{"type": "OFFER", "assigned_ip": "127.0.0.2"}').show(dump=True)
    assert ".type     = 'OFFER'" in shown and ".assigned_ip= '127.0.0.2'" in shown
    assert "text      = 'DISCOVER'" in DHCPJson.discover().show(dump=True)
    assert ".domain   = 'x.local'" in DNSJson(domain="x.local").show(dump=True)


def test_rudp_syn_literal_bytes() -> None:
    pkt = RUDP(seq=100, ack=0, flag="S")
    assert raw(pkt) == SYN
    again = RUDP(SYN)
    assert (again.seq, again.ack, again.flag, again.len) == (100, 0, b"S", 0)


def test_rudp_len_filled_from_payload() -> None:
    pkt = RUDP(seq=101, flag=Flag.DATA) / COMMAND
    data = raw(pkt)
    assert data[:11] == b"\x00\x00\x00e\x00\x00\x00\x00D\x00)"
    assert data[11:] == COMMAND
    again = RUDP(data)
    assert again.len == 41
    assert again[Raw].load == COMMAND
    assert again.summary() == "RUDP D seq=101 ack=0 len=41 / Raw"


@pytest.mark.parametrize(
    ("given", "expected"),
    [("A", b"A"), ("ACK", b"A"), ("fin", b"F"), (Flag.SYN, b"S"), (0x44, b"D"), (b"\x07", b"\x07")],
)
def test_flag_accepts_letters_names_enums_ints(given: object, expected: bytes) -> None:
    assert RUDP(flag=given).flag == expected


def test_flag_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="not a RUDP flag"):
        RUDP(flag="XYZ")


def test_unknown_flag_kept_and_shown() -> None:
    pkt = RUDP(b"\x00\x00\x00\x01\x00\x00\x00\x02\x07\x00\x00")
    assert pkt.flag == b"\x07"
    assert "unknown" in pkt.get_field("flag").i2repr(pkt, pkt.flag)
    assert pkt.mysummary() == "RUDP \\x07 seq=1 ack=2 len=0"
    assert raw(pkt) == b"\x00\x00\x00\x01\x00\x00\x00\x02\x07\x00\x00"


def test_bytes_beyond_len_are_padding() -> None:
    pkt = RUDP(b"\x00\x00\x00\x01\x00\x00\x00\x00D\x00\x02hixyz")
    assert pkt[Raw].load == b"hi"
    assert pkt[Padding].load == b"xyz"
    assert pkt.mysummary() == "RUDP D seq=1 ack=0 len=2 (+3 bytes padding)"


def test_lying_long_len_keeps_what_is_there() -> None:
    pkt = RUDP(b"\x00\x00\x00\x01\x00\x00\x00\x00D\x01\x00hi")
    assert pkt.len == 256
    assert pkt[Raw].load == b"hi"
    assert pkt.mysummary() == "RUDP D seq=1 ack=0 len=256 (only 2 bytes present)"


def test_rudp_bound_on_both_ports() -> None:
    to_server = _udp(40000, 2122, SYN)
    from_server = _udp(2122, 40000, b"\x00\x00\x00\x00\x00\x00\x00eA\x00\x00")
    assert to_server[RUDP].seq == 100
    assert from_server[RUDP].ack == 101
    assert from_server[RUDP].flag == b"A"


def test_answers_pairs_acks() -> None:
    syn = RUDP(seq=100, flag="S")
    synack = RUDP(seq=0, ack=101, flag="A")
    assert synack.answers(syn)
    assert not RUDP(ack=100, flag="A").answers(syn)
    data = RUDP(seq=3, flag="D") / b"x"
    assert RUDP(ack=3, flag="A").answers(data)
    assert RUDP(ack=5, flag="A").answers(data)  # cumulative
    assert not RUDP(ack=2, flag="A").answers(data)
    assert RUDP(ack=142, flag="A").answers(RUDP(seq=101, flag="D"))  # byte counting
    fin = RUDP(seq=2, flag="F")
    assert RUDP(ack=2, flag="A").answers(fin)
    assert not RUDP(ack=9, flag="A").answers(fin)
    assert not RUDP(ack=3, flag="D").answers(data)  # only ACKs answer
    assert syn.hashret() == synack.hashret()


def test_answers_through_ip_udp() -> None:
    request = (
        IP(src="127.0.0.1", dst="127.0.0.3")
        / UDP(sport=40000, dport=2122)
        / RUDP(seq=100, flag="S")
    )
    reply = (
        IP(src="127.0.0.3", dst="127.0.0.1")
        / UDP(sport=2122, dport=40000)
        / RUDP(ack=101, flag="A")
    )
    assert reply.answers(request)
    assert request.hashret() == reply.hashret()


# -- JSON messages --------------------------------------------------------------


def test_discover_is_bare_keyword() -> None:
    pkt = _udp(50000, 6767, b"DISCOVER")
    assert isinstance(pkt[UDP].payload, DHCPJson)
    assert pkt[DHCPJson].obj is None
    assert pkt[DHCPJson].text == "DISCOVER"
    assert pkt[DHCPJson].mysummary() == "DHCP DISCOVER"
    assert raw(DHCPJson.discover()) == b"DISCOVER"


def test_offer_crafted_like_json_dumps() -> None:
    offer = DHCPJson(type="OFFER", assigned_ip="127.0.0.2")
    assert raw(offer) == b'{"type": "OFFER", "assigned_ip": "127.0.0.2"}'
    pkt = _udp(6767, 50000, raw(offer))
    msg = pkt[DHCPJson]
    assert msg.obj == {"type": "OFFER", "assigned_ip": "127.0.0.2"}
    assert msg.type == "OFFER"
    assert msg.assigned_ip == "127.0.0.2"
    assert msg.domain is None
    assert msg.mysummary() == "DHCP OFFER 127.0.0.2"


def test_dns_json_on_5353_is_not_mdns() -> None:
    query = _udp(50000, 5353, raw(DNSJson(domain="my-app-server.local")))
    assert DNS not in query
    assert query[DNSJson].domain == "my-app-server.local"
    assert query[DNSJson].mysummary() == "DNS-JSON query my-app-server.local"
    answer = _udp(5353, 50000, b'{"status": "SUCCESS", "ip": "127.0.0.3"}')
    assert answer[DNSJson].status == "SUCCESS"
    assert answer[DNSJson].ip == "127.0.0.3"
    assert answer[DNSJson].mysummary() == "DNS-JSON answer SUCCESS 127.0.0.3"
    missing = _udp(5353, 50000, b'{"status": "NOT_FOUND", "ip": null}')
    assert missing[DNSJson].mysummary() == "DNS-JSON answer NOT_FOUND"


def test_binary_mdns_on_5353_still_decodes_as_dns() -> None:
    mdns = raw(DNS(qd=DNSQR(qname="printer.local")))
    pkt = _udp(5353, 5353, mdns)
    assert DNSJson not in pkt
    assert pkt[DNS].qd[0].qname == b"printer.local."


def test_broken_json_round_trips() -> None:
    data = b'{"domain": "x"'
    pkt = _udp(50000, 5353, data)
    msg = pkt[DNSJson]
    assert msg.obj is None
    assert "error" in msg.info
    assert raw(msg) == data
    assert msg.mysummary().endswith("(invalid JSON)")


# -- App frames -----------------------------------------------------------------


def test_app_frame_literal_bytes() -> None:
    frame = AppFrame(body=COMMAND)
    assert raw(frame) == b"0000000041" + COMMAND
    again = AppFrame(raw(frame))
    assert (again.len, again.body, again.complete) == (41, COMMAND, True)
    assert again.mysummary() == f"APP frame len=41 {COMMAND.decode()}"


def test_two_frames_in_one_segment_stack() -> None:
    data = b"0000000002hi0000000003bye"
    pkt = IP(raw(IP() / TCP(sport=40000, dport=2121, flags="PA") / data))
    frames = [layer for layer in pkt.iterpayloads() if isinstance(layer, AppFrame)]
    assert [(f.len, f.body) for f in frames] == [(2, b"hi"), (3, b"bye")]


def test_non_frame_segment_is_raw() -> None:
    pkt = IP(raw(IP() / TCP(sport=40000, dport=2121) / b"GET / HTTP/1.1\r\n"))
    assert AppFrame not in pkt
    assert pkt[Raw].load.startswith(b"GET")


def test_app_frames_reassembles_split_and_joined_segments() -> None:
    stream = b"0000000041" + COMMAND + b"0000000002ok"
    cuts = [0, 4, 30, 51, 53, len(stream)]
    base = IP(src="10.0.0.1", dst="10.0.0.2")
    pkts = [base / TCP(sport=40000, dport=2121, flags="S", seq=999)]
    pkts += [
        base / TCP(sport=40000, dport=2121, flags="PA", seq=1000 + a) / stream[a:b]
        for a, b in itertools.pairwise(cuts)
    ]
    pkts.insert(3, pkts[2].copy())  # a retransmission
    got = list(app_frames(pkts))
    assert [(g.number, g.direction, g.frame.body) for g in got] == [
        (5, "c2s", COMMAND),
        (7, "c2s", b"ok"),
    ]
    assert [g.index for g in got] == [4, 6]


def test_app_frames_of_part1() -> None:
    packets = rdpcap(str(seed_capture("part1_flow")))
    got = list(app_frames(packets))
    assert [(g.number, g.direction, g.frame.len) for g in got] == [  # frames as decode numbers them
        (8, "c2s", 41),
        (21, "s2c", 65),
    ]
    assert got[0].frame.body == COMMAND


# -- Bindings -------------------------------------------------------------------


def test_bind_ports_moves_every_layer_and_restores() -> None:
    before_udp, before_tcp = list(UDP.payload_guess), list(TCP.payload_guess)
    before_ports = current_ports()
    custom = Ports(rudp=9122, dns=9353, dhcp=9767, app=9121)
    with scapy_bindings(custom):
        assert current_ports() == custom
        assert RUDP in _udp(40000, 9122, SYN)
        assert RUDP not in _udp(40000, 2122, SYN)
        assert DHCPJson in _udp(40000, 9767, b"DISCOVER")
        assert DNSJson in _udp(40000, 9353, b'{"domain": "a"}')
        # 5353 is no longer ours: Scapy's mDNS binding is back on it.
        assert DNSJson not in _udp(5353, 5353, raw(DNS(qd=DNSQR(qname="a.local"))))
        assert DNS in _udp(5353, 5353, raw(DNS(qd=DNSQR(qname="a.local"))))
        tcp = IP(raw(IP() / TCP(sport=40000, dport=9121) / b"0000000002hi"))
        assert tcp[AppFrame].body == b"hi"
        assert raw(UDP() / RUDP())[2:4] == (9122).to_bytes(2, "big")
    assert UDP.payload_guess == before_udp
    assert TCP.payload_guess == before_tcp
    assert current_ports() == before_ports
    assert RUDP in _udp(40000, 2122, SYN)


def test_rebinding_twice_leaves_one_binding() -> None:
    with scapy_bindings():
        bind_ports(Ports(rudp=7000))
        bind_ports(Ports(rudp=7001))
        assert RUDP not in _udp(40000, 7000, SYN)
        assert RUDP in _udp(40000, 7001, SYN)
        ours = [e for e in UDP.payload_guess if e[1] is RUDP]
        assert ours == [({"dport": 7001}, RUDP), ({"sport": 7001}, RUDP)]


def test_configured_port_beats_scapy_defaults() -> None:
    # UDP() defaults to sport 53, which Scapy binds to DNS: ours must still win.
    pkt = IP(raw(IP() / UDP(dport=2122) / RUDP(seq=7, flag="S")))
    assert pkt[RUDP].seq == 7


def test_heuristic_finds_rudp_on_any_port_strictly() -> None:
    with scapy_bindings(heuristic=True):
        assert RUDP in _udp(40000, 40001, SYN)
        assert RUDP not in _udp(40000, 40001, SYN + b"x")  # length must be exact
        assert RUDP not in _udp(40000, 40001, b"\x00" * 8 + b"Z\x00\x00")  # unknown flag
        assert RUDPGuess not in _udp(40000, 40001, b"hello world")
    assert RUDP not in _udp(40000, 40001, SYN)


def test_the_layers_do_not_import_the_analysis_package() -> None:
    # The summaries the layers print live in stacklab.summaries: importing the
    # layers (Scapy) pulls in none of the analysis package, which itself loads
    # the layers' Lua export for its tshark engine.
    import subprocess
    import sys

    code = (
        "import sys, stacklab.layers; "
        "print(sorted(m for m in sys.modules if m.startswith('stacklab.analysis')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
