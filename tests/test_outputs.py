"""Every command that writes follows one output policy (stacklab.files.resolve_output).

Never over an input of the same run, an existing file only with --force (or
the command's documented default), FIFOs and devices written into rather than
replaced, symlinks followed, ``-`` for standard output.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.cli import cli
from stacklab.config import AppTcpSettings
from stacklab.files import OutputError, resolve_output, write_output
from stacklab.services.app_tcp import TcpAppServer
from stacklab.services.fetcher import FetchPolicy

from conftest import REPO, seed_capture

CLEAN = "part3_rudp_clean_flow"


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    """A private copy of a seed capture, so that a wrong write would show."""
    copy = tmp_path / "x.pcapng"
    copy.write_bytes(seed_capture(CLEAN).read_bytes())
    return copy


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


# -- the policy itself ----------------------------------------------------------------


def test_an_input_is_refused_however_it_is_spelled(capture: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.pcapng"
    link.symlink_to(capture)
    hard = tmp_path / "hard.pcapng"
    os.link(capture, hard)
    for spelling in (capture, link, hard, tmp_path / "." / "x.pcapng"):
        with pytest.raises(OutputError, match="is an input of this run"):
            resolve_output(spelling, inputs=[capture], force=True)


def test_existing_files_need_force_or_a_documented_default(tmp_path: Path) -> None:
    target = tmp_path / "out.html"
    assert resolve_output(target).kind == "file"  # new: fine
    target.write_text("old")
    with pytest.raises(OutputError, match="already exists"):
        resolve_output(target)
    assert resolve_output(target, force=True).kind == "file"
    assert resolve_output(target, replace_by_default=True).kind == "file"
    with pytest.raises(OutputError, match="is a folder"):
        resolve_output(tmp_path, force=True)
    with pytest.raises(OutputError, match="no such folder"):
        resolve_output(tmp_path / "missing" / "out.html")


def test_a_symlink_is_followed_and_kept(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    out = resolve_output(link, force=True)
    write_output(out, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"


def test_fifo_and_devices_are_written_into(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    out = resolve_output(fifo)  # no --force needed: nothing is replaced
    assert out.kind == "stream"
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_output(out, b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    null = resolve_output("/dev/null")
    assert null.kind == "stream"
    write_output(null, b"gone")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(OSError):  # a full device says so; it is not replaced by a file
        write_output(resolve_output("/dev/full"), b"x" * 10)
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert resolve_output("-").kind == "stdout"


# -- the commands ----------------------------------------------------------------------


def test_report_never_writes_over_its_capture(capture: Path, tmp_path: Path) -> None:
    before = capture.read_bytes()
    code, output = run("report", str(capture), "-o", str(capture), "--force")
    assert code == 2 and "is an input of this run" in output
    assert capture.read_bytes() == before
    target = tmp_path / "r.html"
    code, output = run("report", str(capture), "-o", str(target))
    assert code == 0 and target.read_text().startswith("<!DOCTYPE html>")
    target.write_text("mine")
    code, output = run("report", str(capture), "-o", str(target))
    assert code == 2 and "already exists (--force replaces it)" in output
    assert target.read_text() == "mine"
    code, _ = run("report", str(capture), "-o", str(target), "--force")
    assert code == 0 and target.read_text().startswith("<!DOCTYPE html>")


def test_report_to_standard_output(capture: Path) -> None:
    result = CliRunner().invoke(cli, ["report", str(capture), "-o", "-"])
    assert result.exit_code == 0
    assert result.stdout.startswith("<!DOCTYPE html>")
    assert "wrote standard output" in result.stderr


def test_verify_junit_is_never_a_capture(capture: Path, tmp_path: Path) -> None:
    before = capture.read_bytes()
    code, output = run("verify", "--junit", str(capture), str(capture))
    assert code == 2 and "is an input of this run" in output
    assert capture.read_bytes() == before
    junit = tmp_path / "j.xml"
    junit.write_text("last run")  # a CI report of the previous run is replaced
    code, _ = run("verify", "--junit", str(junit), str(capture))
    assert code == 0 and junit.read_text().startswith("<?xml")


def test_dissector_needs_force_and_writes_into_a_device(tmp_path: Path) -> None:
    target = tmp_path / "stacklab.lua"
    target.write_text("-- my own")
    code, output = run("dissector", "-o", str(target))
    assert code == 2 and "already exists" in output and target.read_text() == "-- my own"
    code, _ = run("dissector", "-o", str(target), "--force")
    assert code == 0 and "slrudp" in target.read_text()
    code, _ = run("dissector", "-o", "/dev/null")
    assert code == 0 and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_plot_replaces_its_own_images_but_never_an_input(tmp_path: Path) -> None:
    source = seed_capture(CLEAN)
    folder = tmp_path / "plots"
    for _ in range(2):  # a second run draws the same files anew
        code, output = run("plot", str(source), "-o", str(folder))
        assert code == 0, output
    ladder = folder / f"{CLEAN}.ladder.png"
    assert ladder.read_bytes().startswith(b"\x89PNG")
    # A capture that happens to sit where an image would go is not drawn over.
    odd = folder / "odd.pcapng"
    odd.write_bytes(source.read_bytes())
    (folder / "odd.ladder.png").unlink(missing_ok=True)
    os.link(odd, folder / "odd.ladder.png")
    code, output = run("plot", str(odd), "-o", str(folder))
    assert code == 2 and "is an input of this run" in output
    assert odd.read_bytes() == source.read_bytes()


@pytest.fixture
def app_server(tmp_path: Path) -> Iterator[TcpAppServer]:
    def fetcher(url: str, policy: FetchPolicy) -> bytes:
        return b"fresh content"

    settings = AppTcpSettings(host="127.0.0.1", port=0)
    server = TcpAppServer(settings, FetchPolicy(allow=("127.0.0.1:1",)), fetcher=fetcher)
    server.start()
    yield server
    server.stop()


def test_fetch_replaces_like_the_original_unless_no_clobber(
    app_server: TcpAppServer, tmp_path: Path
) -> None:
    host, port = app_server.address
    target = tmp_path / "file.txt"
    target.write_text("old")
    base = ["fetch", "http://127.0.0.1:1/file.txt", "--server", f"{host}:{port}", "-o"]
    code, output = run(*base, str(target), "--no-clobber")
    assert code == 2 and "already exists" in output and target.read_text() == "old"
    code, output = run(*base, str(target))
    assert code == 0, output
    assert target.read_bytes() == b"fresh content"
    result = CliRunner().invoke(cli, [*base, "-"])
    assert result.exit_code == 0 and result.stdout == "fresh content"


def test_capture_refuses_an_existing_file_before_capturing(tmp_path: Path) -> None:
    target = tmp_path / "hs.pcapng"
    target.write_bytes(b"keep me")
    code, output = run("capture", "rudp-handshake", "-o", str(target))
    assert code == 2 and "already exists (--force replaces it)" in output
    assert target.read_bytes() == b"keep me"
    code, output = run("capture", "all", "-o", "-")
    assert code == 2 and "one scenario" in output


def test_decode_json_keeps_diagnostics_on_stderr(tmp_path: Path) -> None:
    """A truncated capture: the warning goes to stderr, stdout stays JSON lines."""
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(seed_capture("part4_rudp_loss_flow").read_bytes()[:3000])
    proc = subprocess.run(
        [sys.executable, "-m", "stacklab", "decode", "--json", str(cut)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)
    assert "ends in the middle of a record" in " ".join(proc.stderr.split())
