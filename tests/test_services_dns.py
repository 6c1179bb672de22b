"""DNS: the original JSON exchange byte for byte, RFC 1035 A queries, zones, bad input."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacklab.config import DnsSettings
from stacklab.services.dns import DnsServer, ZoneError, load_zone


def ask(addr: tuple[str, int], data: bytes, timeout: float = 2.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, addr)
        return sock.recvfrom(65535)[0]


@pytest.fixture
def server() -> Iterator[DnsServer]:
    records = {"my-app-server.local": "127.0.0.3", "Web.Example.": "127.0.0.9"}
    with DnsServer(DnsSettings(host="127.0.0.1", port=0), records) as dns_server:
        assert isinstance(dns_server, DnsServer)
        yield dns_server


def test_original_json_exchange_byte_for_byte(server: DnsServer) -> None:
    addr = server.address
    assert (
        ask(addr, b'{"domain": "my-app-server.local"}')
        == b'{"status": "SUCCESS", "ip": "127.0.0.3"}'
    )
    assert ask(addr, b'{"domain": "nope.local"}') == b'{"status": "NOT_FOUND", "ip": null}'
    assert ask(addr, b'{"name": "my-app-server.local"}') == b'{"status": "ERROR", "ip": null}'


def test_names_are_case_insensitive_and_ignore_the_final_dot(server: DnsServer) -> None:
    for name in ("MY-APP-SERVER.local", "my-app-server.local.", "web.example"):
        reply = ask(server.address, f'{{"domain": "{name}"}}'.encode())
        assert reply.startswith(b'{"status": "SUCCESS"')


@pytest.mark.parametrize(
    "query", [b'{"domain": 5}', b'{"domain": null}', b'{"domain": ["a"]}', b'{"domain": {"x": 1}}']
)
def test_wrong_domain_types_get_error_status(server: DnsServer, query: bytes) -> None:
    assert ask(server.address, query) == b'{"status": "ERROR", "ip": null}'


def wire_query(server: DnsServer, name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    reply = dns.message.from_wire(ask(server.address, query.to_wire()))
    assert reply.id == query.id and reply.flags & dns.flags.QR
    return reply


def test_wire_format_a_query(server: DnsServer) -> None:
    reply = wire_query(server, "My-App-Server.local")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert [rr.address for rr in reply.answer[0]] == ["127.0.0.3"]
    assert reply.answer[0].ttl == 60


def test_wire_format_unknown_name_and_other_types(server: DnsServer) -> None:
    assert wire_query(server, "nope.local").rcode() == dns.rcode.NXDOMAIN
    aaaa = wire_query(server, "my-app-server.local", "AAAA")
    assert aaaa.rcode() == dns.rcode.NOERROR and not aaaa.answer


def test_wire_format_id_starting_with_a_brace_is_not_mistaken_for_json(server: DnsServer) -> None:
    query = dns.message.make_query("my-app-server.local", "A")
    query.id = 0x7B20  # "{ "
    reply = dns.message.from_wire(ask(server.address, query.to_wire()))
    assert [rr.address for rr in reply.answer[0]] == ["127.0.0.3"]


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed")
def test_dig_works(server: DnsServer) -> None:
    host, port = server.address
    out = subprocess.run(
        [
            "dig",
            "+short",
            "+tries=1",
            "+time=2",
            f"@{host}",
            "-p",
            str(port),
            "my-app-server.local",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert out.stdout.split() == ["127.0.0.3"]


def fixed_query() -> dns.message.Message:
    """A query with a fixed ID, so parametrized test IDs are the same in every worker."""
    query = dns.message.make_query("a.b", "A")
    query.id = 0x1234
    return query


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"{",
        b'{"domain": "my-app-server.local"',
        b"\xff\xfe{}",
        b"{\xff\xfe}",
        b"not json at all",
        b"[" * 2000 + b"]" * 2000,
        b"{" + b'"a":[' * 2000 + b"]" * 2000 + b"}",
        b"{" * 30_000,
        b'{"domain": "' + b"x" * 40_000 + b'"}',
        b"\x00\x01",  # truncated DNS header
        fixed_query().to_wire()[:15],
        dns.message.make_response(fixed_query()).to_wire(),  # a response, not a query
    ],
)
def test_bad_input_is_dropped_and_the_server_keeps_answering(server: DnsServer, bad: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(bad, server.address)
        with pytest.raises(TimeoutError):
            sock.recvfrom(65535)
    assert ask(server.address, b'{"domain": "my-app-server.local"}').startswith(
        b'{"status": "SUCCESS"'
    )
    assert server.stats["dropped"] == 1 and server.stats["errors"] == 0


def test_zone_files(tmp_path: Path) -> None:
    toml = tmp_path / "zone.toml"
    toml.write_text('[records]\n"My-App-Server.local" = "127.0.0.3"\n"b.local." = "10.0.0.2"\n')
    assert load_zone(toml) == {"my-app-server.local": "127.0.0.3", "b.local": "10.0.0.2"}
    hosts = tmp_path / "hosts"
    hosts.write_text("# comment\n127.0.0.3 my-app-server.local app  # alias\n\n10.0.0.2 B.local\n")
    assert load_zone(hosts) == {
        "my-app-server.local": "127.0.0.3",
        "app": "127.0.0.3",
        "b.local": "10.0.0.2",
    }


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.toml", "[records\n", "not valid TOML"),
        ("bad.toml", "[records]\na = 1\n", "must map to an address string"),
        ("hosts", "127.0.0.1\n", ":1: expected 'address name"),
        ("hosts", "nonsense name\n", "is not an IPv4 address"),
    ],
)
def test_bad_zone_files_are_clear_errors(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ZoneError, match=message):
        load_zone(path)
    with pytest.raises(ZoneError, match="cannot read"):
        load_zone(tmp_path / "missing")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=100).map(lambda t: ("{" + t).encode())))
def test_any_datagram_gets_a_reply_or_nothing_never_an_exception(data: bytes) -> None:
    server = DnsServer(DnsSettings(), {"my-app-server.local": "127.0.0.3"})  # no socket needed
    reply = server.handle_datagram(data, ("127.0.0.1", 1))
    if reply is not None and reply.startswith(b"{"):
        assert json.loads(reply)["status"] in ("SUCCESS", "NOT_FOUND", "ERROR")
    elif reply is not None:
        assert dns.message.from_wire(reply).flags & dns.flags.QR
