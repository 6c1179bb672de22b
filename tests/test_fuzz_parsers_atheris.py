"""Coverage-guided fuzzing of the parsers with atheris (libFuzzer), where it is installed.

atheris is optional (``pip install 'stacklab[fuzz]'``, Linux, Python < 3.12);
without it these tests are skipped and the Hypothesis tests in
``test_fuzz_parsers.py`` still cover every parser.  Each target runs in a
child process (libFuzzer owns the process and exits at the end) for a fixed
number of runs with a fixed seed, so a run is reproducible; an uncaught
exception in a target makes libFuzzer exit non-zero and print the input.

Run one target by hand for longer: ``python tests/test_fuzz_parsers_atheris.py rudp -runs=1000000``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest

RUNS = 5_000


def target_rudp(data: bytes) -> None:
    from stacklab.transport.handshake import Handshake, SynCookies
    from stacklab.transport.options import ORIGINAL, OptionLimits
    from stacklab.transport.server import ServerSession
    from stacklab.wire import RudpDecodeError, unpack_rudp

    with contextlib.suppress(RudpDecodeError):
        unpack_rudp(data)
    hs = Handshake(OptionLimits(), ORIGINAL, SynCookies(b"k" * 32))
    answer = hs.answer_syn(data, ("192.0.2.1", 1), 0.0)
    assert answer is None or len(answer) <= 3 * len(data)
    session = hs.accept_command(data, ("192.0.2.1", 1), 0.0, ServerSession)
    if session is None:
        session = ServerSession(trace=False)
    for part in (data, data[: len(data) // 2]):
        session.receive_datagram(part, 1.0)
        session.datagrams_to_send(1.0)


def target_json(data: bytes) -> None:
    from stacklab.config import DnsSettings
    from stacklab.services.dhcp import Malformed, parse_message
    from stacklab.services.dns import DnsServer

    with contextlib.suppress(Malformed):
        parse_message(data)
    DnsServer(DnsSettings(host="127.0.0.1", port=0), {"a.local": "127.0.0.3"}).handle_datagram(
        data, ("192.0.2.1", 1)
    )


def target_frames(data: bytes) -> None:
    from stacklab.framing import FrameDecoder, FramingError

    decoder = FrameDecoder(4096)
    try:
        for i in range(0, len(data), 7):
            decoder.feed(data[i : i + 7])
    except FramingError:
        pass


def target_packets(data: bytes) -> None:
    from stacklab.analysis.pcapio import Frame, parse_packet

    for linktype in (0, 1, 101, 113, 276):
        parse_packet(Frame(1, 0.0, linktype, data))


TARGETS = {
    "rudp": target_rudp,
    "json": target_json,
    "frames": target_frames,
    "packets": target_packets,
}


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_atheris_target(name: str) -> None:
    pytest.importorskip("atheris")
    result = subprocess.run(
        [sys.executable, __file__, name, f"-runs={RUNS}", "-seed=1", "-max_len=2048"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Done {RUNS} runs" in result.stderr


if __name__ == "__main__":
    import atheris

    target = TARGETS[sys.argv[1]]
    with atheris.instrument_imports():
        import stacklab.analysis.pcapio
        import stacklab.framing
        import stacklab.services.dhcp
        import stacklab.services.dns
        import stacklab.transport.handshake
        import stacklab.transport.server
        import stacklab.wire  # noqa: F401
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()
