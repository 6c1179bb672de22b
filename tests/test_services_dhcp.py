"""DHCP: the original keyword exchange byte for byte, JSON leases, persistence, bad input."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacklab.config import DhcpSettings
from stacklab.services.dhcp import DhcpServer
from stacklab.services.leases import BOUND, OFFERED, LeaseError, LeaseTable, SqliteLeaseStore


class Clock:
    """A virtual clock the test steps by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ask(addr: tuple[str, int], data: bytes, timeout: float = 2.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, addr)
        return sock.recvfrom(65535)[0]


def ask_json(addr: tuple[str, int], message: dict[str, object]) -> dict[str, object]:
    reply = json.loads(ask(addr, json.dumps(message).encode()))
    assert isinstance(reply, dict)
    return reply


def settings_for(tmp_path: Path, **kwargs: object) -> DhcpSettings:
    return DhcpSettings(
        host="127.0.0.1", port=0, lease_db=str(tmp_path / "leases.sqlite3"), **kwargs
    )  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(tmp_path: Path, clock: Clock) -> Iterator[DhcpServer]:
    with DhcpServer(settings_for(tmp_path), clock=clock) as dhcp:
        assert isinstance(dhcp, DhcpServer)
        yield dhcp


# --- the sans-I/O lease table, on a virtual clock ---------------------------


def table(size: int = 3, lease_time: float = 100.0, offer_time: float = 10.0) -> LeaseTable:
    return LeaseTable("10.0.0.1", f"10.0.0.{size}", lease_time, offer_time)


def test_offer_request_release_cycle() -> None:
    t = table()
    offer = t.offer("a", now=0)
    assert (offer.ip, offer.state, offer.expires) == ("10.0.0.1", OFFERED, 10.0)
    assert t.offer("a", now=1).ip == "10.0.0.1"  # the same client gets the same address
    assert t.offer("b", now=1).ip == "10.0.0.2"
    bound = t.request("a", None, now=2)
    assert (bound.ip, bound.state, bound.expires) == ("10.0.0.1", BOUND, 102.0)
    assert t.release("a", now=3) == bound
    assert t.offer("c", now=4).ip == "10.0.0.1"  # released addresses are reused, lowest first


def test_offers_and_leases_expire_on_the_clock() -> None:
    t = table(size=1)
    t.offer("a", now=0)
    with pytest.raises(LeaseError, match="exhausted"):
        t.offer("b", now=9.9)
    assert t.offer("b", now=10.0).ip == "10.0.0.1"  # a's offer lapsed at 10
    t.request("b", "10.0.0.1", now=10.0)
    with pytest.raises(LeaseError, match="leased to another client"):
        t.request("a", "10.0.0.1", now=109.9)
    assert t.request("a", "10.0.0.1", now=110.0).client_id == "a"


def test_request_refusals() -> None:
    t = table()
    with pytest.raises(LeaseError, match="no address was offered"):
        t.request("a", None, now=0)
    with pytest.raises(LeaseError, match="not in the address pool"):
        t.request("a", "192.168.1.1", now=0)
    with pytest.raises(LeaseError, match="not in the address pool"):
        t.request("a", "not an ip", now=0)


def test_moving_to_another_address_frees_the_old_one() -> None:
    t = table()
    t.request("a", "10.0.0.1", now=0)
    t.request("a", "10.0.0.3", now=1)
    assert [lease.ip for lease in t.leases()] == ["10.0.0.3"]
    assert t.offer("b", now=2).ip == "10.0.0.1"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["offer", "request", "release"]),
            st.sampled_from("abcdef"),
            st.sampled_from([None, "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9"]),
            st.floats(0, 30),
        ),
        max_size=40,
    )
)
def test_no_address_is_ever_held_by_two_clients(
    ops: list[tuple[str, str, str | None, float]],
) -> None:
    t = table(lease_time=50, offer_time=5)
    now = 0.0
    for op, client, ip, step in ops:
        now += step
        try:
            if op == "offer":
                t.offer(client, now)
            elif op == "request":
                t.request(client, ip, now)
            else:
                t.release(client, now)
        except LeaseError:
            pass
        leases = t.leases()
        assert len({lease.ip for lease in leases}) == len(leases)
        assert len({lease.client_id for lease in leases}) == len(leases)
        assert all(t.in_pool(lease.ip) for lease in leases)


def test_sqlite_store_round_trip(tmp_path: Path) -> None:
    store = SqliteLeaseStore(tmp_path / "sub" / "l.sqlite3", create_folder=True)
    t = table()
    lease = t.request("a", "10.0.0.2", now=0)
    store.put(lease)
    store.put(t.request("a", "10.0.0.3", now=1))  # replaces a's row
    store.close()
    reopened = SqliteLeaseStore(tmp_path / "sub" / "l.sqlite3")
    assert [(x.ip, x.client_id, x.state) for x in reopened.load()] == [("10.0.0.3", "a", BOUND)]
    reopened.close()


# --- the server over loopback ------------------------------------------------


def test_bare_discover_gets_the_original_offer_byte_for_byte(server: DhcpServer) -> None:
    assert ask(server.address, b"DISCOVER") == b'{"type": "OFFER", "assigned_ip": "127.0.0.2"}'
    # the original client runs again from a new port: same address, same bytes
    assert ask(server.address, b"DISCOVER") == b'{"type": "OFFER", "assigned_ip": "127.0.0.2"}'


def test_json_lease_exchange(server: DhcpServer, clock: Clock) -> None:
    addr = server.address
    ask(addr, b"DISCOVER")  # the loopback host holds 127.0.0.2
    offer = ask_json(addr, {"type": "DISCOVER", "client_id": "laptop"})
    assert offer == {
        "type": "OFFER",
        "assigned_ip": "127.0.0.3",
        "client_id": "laptop",
        "lease_time": 60,
    }
    ack = ask_json(addr, {"type": "REQUEST", "client_id": "laptop", "requested_ip": "127.0.0.3"})
    assert ack == {
        "type": "ACK",
        "assigned_ip": "127.0.0.3",
        "client_id": "laptop",
        "lease_time": 3600,
    }
    nak = ask_json(addr, {"type": "REQUEST", "client_id": "phone", "requested_ip": "127.0.0.3"})
    assert nak["type"] == "NAK" and "leased to another client" in str(nak["reason"])
    released = ask_json(addr, {"type": "RELEASE", "client_id": "laptop"})
    assert released == {"type": "RELEASED", "client_id": "laptop", "ip": "127.0.0.3"}
    clock.now += 3600
    again = ask_json(addr, {"type": "REQUEST", "client_id": "phone", "requested_ip": "127.0.0.3"})
    assert again["type"] == "ACK"


def test_exhausted_pool_is_a_clear_nak(tmp_path: Path, clock: Clock) -> None:
    settings = settings_for(tmp_path, pool_start="127.0.0.2", pool_end="127.0.0.3")
    with DhcpServer(settings, clock=clock) as dhcp:
        for client_id in ("a", "b"):
            assert (
                ask_json(dhcp.address, {"type": "DISCOVER", "client_id": client_id})["type"]
                == "OFFER"
            )
        nak = ask_json(dhcp.address, {"type": "DISCOVER", "client_id": "c"})
        assert nak == {
            "type": "NAK",
            "client_id": "c",
            "reason": "address pool exhausted (2 addresses in use)",
        }
        assert json.loads(ask(dhcp.address, b"DISCOVER"))["type"] == "NAK"


def test_leases_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    settings = settings_for(tmp_path)
    with DhcpServer(settings, clock=clock) as dhcp:
        ask_json(dhcp.address, {"type": "REQUEST", "client_id": "a", "requested_ip": "127.0.0.9"})
    with DhcpServer(settings, clock=clock) as dhcp:
        offer = ask_json(dhcp.address, {"type": "DISCOVER", "client_id": "a"})
        assert offer["assigned_ip"] == "127.0.0.9"
        nak = ask_json(
            dhcp.address, {"type": "REQUEST", "client_id": "b", "requested_ip": "127.0.0.9"}
        )
        assert nak["type"] == "NAK"


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"DISCOVE",
        b"DISCOVER\n",
        b"discover",
        b"\xff\xfe\x00garbage",
        b'{"type": "DISCOVER", "client_id": ',
        b'{"type": "DISCOVER"}',
        b'{"type": "DISCOVER", "client_id": 7}',
        b'{"type": "DISCOVER", "client_id": ""}',
        b'{"type": ["DISCOVER"], "client_id": "a"}',
        b'{"type": "REQUEST", "client_id": "a", "requested_ip": 5}',
        b'{"type": "BOGUS", "client_id": "a"}',
        b"[1, 2, 3]",
        b"null",
        b"[" * 2000 + b"]" * 2000,  # deeper than json's recursion limit, under the size cap
        b"[" * 30_000 + b"]" * 30_000,
        b'{"type": "DISCOVER", "client_id": "' + b"x" * 60_000 + b'"}',
    ],
)
def test_bad_input_is_dropped_and_the_server_keeps_answering(
    server: DhcpServer, bad: bytes
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(bad, server.address)
        with pytest.raises(TimeoutError):
            sock.recvfrom(65535)  # no reply to garbage, as the original
    assert ask(server.address, b"DISCOVER").startswith(b'{"type": "OFFER"')
    assert server.stats["dropped"] == 1
    assert server.stats["errors"] == 0


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.dictionaries(
            st.sampled_from(["type", "client_id", "requested_ip", "x"]),
            st.one_of(
                st.sampled_from(["DISCOVER", "REQUEST", "RELEASE", "127.0.0.5", "a"]),
                st.integers(),
                st.none(),
                st.lists(st.integers(), max_size=2),
            ),
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_any_datagram_gets_a_reply_or_nothing_never_an_exception(data: bytes) -> None:
    server = DhcpServer(DhcpSettings(lease_db=":memory:"), clock=Clock())  # table only, no socket
    reply = server.handle_datagram(data, ("127.0.0.1", 1))
    if reply is not None:
        assert json.loads(reply)["type"] in ("OFFER", "ACK", "NAK", "RELEASED")


def test_failed_bind_closes_the_lease_database(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        settings = settings_for(tmp_path)
        settings.port = holder.getsockname()[1]
        dhcp = DhcpServer(settings)
        with pytest.raises(OSError, match="address in use"):
            dhcp.start()
        assert dhcp.store is None
