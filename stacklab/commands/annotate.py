"""``stacklab annotate CAPTURE -o OUT.pcapng``: the capture with the verifier's findings as comments.

Every packet is copied unchanged (bytes, timestamps, interfaces, the
section's comments); each finding becomes one pcapng packet comment on its
frame, ``stacklab: <kind>: <text>`` (see :mod:`stacklab.analysis.findings`),
which Wireshark shows as ``frame.comment`` and the generated Lua dissector
turns into ``slrudp.analysis.*`` fields and Expert Info.  The copy streams
block by block.  The exit status is that of the file being written (0), not
of the checks: ``stacklab verify`` is the command that fails a build
(``verify --annotate OUT`` does both).

The output follows :mod:`stacklab.files`: never the capture itself, an
existing file only with ``--force``, ``-o -`` for standard output (for
``| tshark -r -``; the summary line goes to standard error).
"""

from __future__ import annotations

import os

import click

from stacklab.analysis.findings import PacketFinding, comments_by_frame, count_kinds
from stacklab.analysis.pcapio import CaptureError
from stacklab.analysis.sessions import CaptureAnalysis
from stacklab.cli import is_quiet
from stacklab.commands.plot import capture_options, check_capture, make_ports
from stacklab.errors import UserError
from stacklab.files import Output, resolve_output, write_output

_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


def require_pcapng(path: str) -> None:
    """Refuse, before any work, a capture that cannot carry packet comments."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if head != _PCAPNG_MAGIC:
        raise UserError(
            f"{path}: not a pcapng file: packet comments need pcapng "
            "(convert it first: editcap -F pcapng IN OUT)"
        )


def write_annotated(capture: str, output: Output, analysis: CaptureAnalysis) -> str:
    """Write ``capture`` with ``analysis``'s findings as comments; return the summary line."""
    from stacklab.analysis.pcapng_comments import write_with_comments

    findings = analysis.findings
    comments = comments_by_frame(findings)
    frames: list[int] = []
    try:
        write_output(
            output, lambda handle: frames.append(write_with_comments(capture, handle, comments))
        )
    except CaptureError as exc:
        raise UserError(f"{capture}: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None
    return f"wrote {output}: {frames[0]:,} frames, {summary(findings)}"


def summary(findings: list[PacketFinding]) -> str:
    """``41 findings on 30 frames (19 retransmission, 3 go_back.timeout...)``."""
    if not findings:
        return "no findings"
    kinds = ", ".join(f"{n} {kind}" for kind, n in count_kinds(findings).most_common())
    frames = len({f.frame for f in findings})
    return f"{len(findings)} findings on {frames} frames ({kinds})"


@click.command("annotate")
@click.argument("capture", type=click.Path())
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="The pcapng file to write ('-' for standard output).",
)
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.option(
    "--expect",
    help="Comma-separated checks that must be present, as for verify (e.g. 'handshake').",
)
@capture_options
def annotate(
    capture: str,
    out: str,
    force: bool,
    expect: str | None,
    rudp_port: int,
    dns_port: int,
    dhcp_port: int,
    app_port: int,
    origin_port: int,
    max_window: int,
    min_rto: float,
    events_path: str | None,
) -> None:
    """Copy CAPTURE (pcapng) to OUT with one packet comment per finding of the verifier.

    Retransmissions, go-backs (timeout, fast retransmit), loss probes,
    duplicate ACKs, windows exceeded, bad datagrams and failed checks, as
    "stacklab: KIND: TEXT"; every packet otherwise unchanged.  Open OUT with
    the generated dissector to filter on them: tshark -X
    lua_script:stacklab.lua -r OUT -Y slrudp.analysis.retransmission
    """
    from stacklab.analysis.checks import parse_expect
    from stacklab.analysis.sessions import VerifyOptions
    from stacklab.analysis.verify import analyze_capture

    ports = make_ports(rudp_port, dns_port, dhcp_port, app_port, origin_port)
    check_capture(capture)
    require_pcapng(capture)
    if events_path is not None and not os.path.isfile(events_path):
        raise UserError(f"{events_path}: no such events log")
    try:
        expected = parse_expect(expect)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    output = resolve_output(out, inputs=(capture, events_path), force=force)
    options = VerifyOptions(
        ports=ports,
        max_window=max_window,
        expect=expected,
        min_rto=min_rto,
        events_path=events_path,
        keep_series=False,
        keep_notes=True,
    )
    try:
        analysis = analyze_capture(capture, options)
    except CaptureError as exc:
        raise UserError(str(exc)) from None
    line = write_annotated(capture, output, analysis)
    if not is_quiet():
        click.echo(line, err=True)
