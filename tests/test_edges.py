"""The edges a new user meets: options, Ctrl-C, interrupted captures, odd inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from scapy.packet import Raw
from scapy.utils import PcapWriter

from stacklab.cli import cli
from stacklab.commands.up import config_from_options

from conftest import REPO, requires_netns_capture, seed_capture, wait_for


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def stacklab(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stacklab", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_dns_record_option_works_like_the_toml_table() -> None:
    config = config_from_options(None, None, {"cfg__dns__records": ("Foo.local=1.2.3.4",)})
    assert config.dns_records() == {"foo.local": "1.2.3.4"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "app-rudp", "--app-rudp-chunk-size", "100000"], "app_rudp.chunk_size"),
        (["serve", "app-rudp", "--app-rudp-max-window", "9999999"], "app_rudp.max_window"),
        (["serve", "dns", "--fetch-timeout", "nan"], "not a finite number"),
        (["fetch", "--transport", "rudp", "--port", "70000"], "not in the range"),
        (["fetch", "--port", "0"], "not in the range"),
        (["verify", "--min-rto", "nan", "x.pcapng"], "not a finite number"),
        (["report", "--min-rto", "inf", "x.pcapng"], "not a finite number"),
        (["fetch", "--timeout", "nan"], "not a finite number"),
        (["serve", "dhcp", "--dhcp-lease-db", "/nonexistent-dir/sub/l.db"], "no such folder"),
    ],
)
def test_bad_options_are_one_line_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not Path("/nonexistent-dir").exists()


def test_an_unsupported_link_type_says_so(tmp_path: Path) -> None:
    path = tmp_path / "user0.pcap"
    writer = PcapWriter(str(path), linktype=147)
    for _ in range(3):
        writer.write(Raw(b"x" * 40))
    writer.close()
    code, output = run("verify", str(path))
    assert code == 2 and "link type 147 is not supported" in output
    code, output = run("decode", str(path))
    assert code == 0 and output.count("link type 147 is not supported") == 3


def test_quiet_report_prints_nothing(tmp_path: Path) -> None:
    target = tmp_path / "r.html"
    result = CliRunner().invoke(
        cli, ["-q", "report", str(seed_capture("part1_flow")), "-o", str(target)]
    )
    assert result.exit_code == 0 and result.output == "" and target.exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_interrupt_exits_130_and_terminate_143(
    tmp_path: Path, sig: signal.Signals, code: int, word: str
) -> None:
    """A decode blocked on a FIFO nobody writes to, interrupted: one line, no traceback."""
    fifo = tmp_path / "never.pcapng"
    os.mkfifo(fifo)
    proc = stacklab("decode", str(fifo))

    writers: list[int] = []

    def reader_is_there() -> bool:
        try:  # opening the write end without blocking works once the reader has it open
            writers.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            return False
        return True

    def blocked_in_read() -> bool:
        # A signal that lands between open() returning and read() starting is
        # seen by Python only when read() returns (CPython checks for signals
        # on EINTR, not before the call): a real limit of any Python program,
        # so the test signals once decode sleeps in the kernel's pipe read.
        try:
            wchan = Path(f"/proc/{proc.pid}/wchan").read_text()
        except OSError:
            return True  # no /proc: signal at once, as before
        return "pipe" in wchan or wchan.strip() in ("", "0")

    try:
        # The write end stays open (closing it would let decode read an end of
        # file and exit): decode now waits for bytes that never come.
        wait_for(reader_is_there, 30, "decode opening the FIFO")
        wait_for(blocked_in_read, 30, "decode waiting in read()")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        for writer in writers:
            os.close(writer)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code
    assert err.strip() == f"stacklab: {word}"


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@requires_netns_capture
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("sig", "group"), [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)]
)
def test_an_interrupted_netns_capture_leaves_nothing_behind(
    tmp_path: Path, sig: signal.Signals, group: bool
) -> None:
    """To the parent only, or to the whole group as Ctrl-C in a terminal: nothing is left."""
    target = tmp_path / "loss.pcapng"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stacklab", "capture", "rudp-loss", "--netns", "-o", str(target)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal would give it
    )
    prefix = f"stacklab-{proc.pid}-"

    def raw_file_exists() -> bool:
        return any(p.name.endswith(".raw.pcapng") for p in tmp_path.iterdir())

    try:
        wait_for(raw_file_exists, 60, "dumpcap's raw file")
        assert any(name.startswith(prefix) for name in _netns_names())
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert not any(name.startswith(prefix) for name in _netns_names())
    dumpcaps = subprocess.run(
        ["pgrep", "-f", f"dumpcap .*{tmp_path}"], capture_output=True, text=True, check=False
    )
    assert dumpcaps.stdout == ""
