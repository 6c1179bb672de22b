"""``stacklab fetch --transport rudp``: DHCP -> DNS -> RUDP -> atomic save, over loopback."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.cli import cli
from stacklab.config import load_config
from stacklab.services.stack import Stack

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("state")
    root = tmp_path_factory.mktemp("www")
    (root / "test_file.txt").write_bytes(b"Hello! This is a test file for the Computer Networks.")
    (root / "big.bin").write_bytes(bytes(range(256)) * 4000)
    config = load_config(
        None,
        {
            "dhcp": {"host": "127.0.0.1", "port": 0, "lease_db": str(state / "leases.sqlite3")},
            "dns": {"host": "127.0.0.1", "port": 0},
            "origin": {"host": "127.0.0.1", "port": 0, "root": str(root)},
            "app_tcp": {"host": "127.0.0.3", "port": 0},
            "app_rudp": {"host": "127.0.0.3", "port": 0},
        },
    )
    with Stack(config, ("origin", "dhcp", "dns", "app-rudp")) as running:
        yield running


def fetch(stack: Stack, cwd: Path, name: str, *extra: str) -> tuple[int, str, str]:
    def hp(service: str) -> str:
        host, port = stack.get(service).address
        return f"{host}:{port}"

    args = [
        "fetch",
        f"http://{hp('origin')}/{name}",
        "--transport",
        "rudp",
        "--dhcp",
        hp("dhcp"),
        "--dns",
        hp("dns"),
        "--port",
        str(stack.get("app-rudp").address[1]),
        "-o",
        str(cwd / "out.bin"),
        *extra,
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_fetch_over_rudp_end_to_end(stack: Stack, tmp_path: Path) -> None:
    code, out, err = fetch(stack, tmp_path, "big.bin", "--json")
    assert code == 0, err
    summary = json.loads(out)
    content = bytes(range(256)) * 4000
    assert (tmp_path / "out.bin").read_bytes() == content
    assert summary["transport"] == "rudp" and summary["assigned_ip"] == "127.0.0.2"
    assert summary["sha256"] == hashlib.sha256(content).hexdigest()


@pytest.mark.parametrize(
    "extra",
    [
        ["--legacy"],
        ["--chunk", "500", "--window", "5", "--no-integrity"],
        ["--drop", "0.3", "--seed", "4"],
        ["--delay", "0.001:0.002", "--seed", "1"],
    ],
)
def test_fetch_options(stack: Stack, tmp_path: Path, extra: list[str]) -> None:
    code, _, err = fetch(stack, tmp_path, "test_file.txt", *extra)
    assert code == 0, err
    assert (tmp_path / "out.bin").read_bytes().startswith(b"Hello!")


def test_missing_file_is_exit_1_and_no_output(stack: Stack, tmp_path: Path) -> None:
    code, _, err = fetch(stack, tmp_path, "nope.txt")
    assert code == 1
    assert err.startswith("stacklab: error: the app server answered: ERROR: Could not fetch")
    assert not (tmp_path / "out.bin").exists()


def test_events_file(stack: Stack, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    code, _, err = fetch(stack, tmp_path, "test_file.txt", "--events", str(events))
    assert code == 0, err
    names = [json.loads(line)["name"] for line in events.read_text().splitlines()]
    assert names[0] == "rudp:packet_sent" and "rudp:transfer_complete" in names


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--delay", "x"], "--delay 'x': expected A:B"),
        (["--delay", "2:1"], "need 0 <= A <= B"),
        (["--events", "/nonexistent-dir/e.jsonl"], "cannot write the events file"),
    ],
)
def test_bad_options_are_one_line(
    stack: Stack, tmp_path: Path, extra: list[str], message: str
) -> None:
    code, _, err = fetch(stack, tmp_path, "test_file.txt", *extra)
    assert code in (1, 2)
    assert message in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_rudp_options_with_tcp_are_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["fetch", "--drop", "0.1", "--server", "127.0.0.1:9"])
    assert result.exit_code == 2
    assert "--drop: only with --transport rudp" in result.stderr


@pytest.mark.parametrize("other", ["--legacy", "--no-integrity"])
def test_integrity_required_with_a_contradiction_is_refused(other: str) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "fetch",
            "--transport",
            "rudp",
            "--integrity",
            "required",
            other,
            "--server",
            "127.0.0.1:9",
        ],
    )
    assert result.exit_code == 2
    assert "--integrity required: not with --no-integrity or --legacy" in result.stderr


def test_timeout_bounds_the_wait_for_a_silent_rudp_server(tmp_path: Path) -> None:
    """A bound socket that never answers: without --timeout the SYN is resent for about a minute."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        host, port = silent.getsockname()
        result = CliRunner().invoke(
            cli,
            [
                "fetch",
                "--transport",
                "rudp",
                "--server",
                f"{host}:{port}",
                "--timeout",
                "0.4",
                "-o",
                str(tmp_path / "out.bin"),
            ],
        )
        silent.setblocking(False)
        syn = silent.recv(2048)  # the client did knock
        with pytest.raises(BlockingIOError):
            silent.recv(2048)  # once: it gave up before its first resend (RTO 1 s)
    assert result.exit_code == 1
    assert "no answer to the SYN within 0.4 s" in result.stderr
    assert syn[8:9] == b"S"
    assert not (tmp_path / "out.bin").exists()
