"""stacklab.pyshark: pyshark with the dissector, compared with stacklab's own decode."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import stacklab
import stacklab.pyshark as sp
from stacklab.wire import Ports

from conftest import REPO, SEED_NAMES, requires_tshark, seed_capture

pytestmark = [requires_tshark, pytest.mark.tshark, pytest.mark.timeout(180)]


def _pyshark_rudp(packets: list) -> dict[int, tuple]:
    rows = {}
    for packet in packets:
        layer = packet.slrudp
        status = layer.get_field("crc32c.status") if "crc32c" in layer.field_names else None
        rows[int(packet.number)] = (
            int(layer.seq),
            int(layer.ack),
            layer.flag,
            int(layer.len),
            "ok" if status == "1" else None,
        )
        assert [lay.layer_name for lay in packet.layers][-1] == "slrudp"  # no phantom layer
    return rows


def _decode_rudp(path: Path) -> dict[int, tuple]:
    return {
        p.frame: (p.info["seq"], p.info["ack"], p.info["flag"], p.info["len"], p.info.get("crc32c"))
        for p in stacklab.decode(path, only="rudp")
        if p.info is not None
    }


def _decode_rudp(path: Path) -> dict[int, tuple]:
    return {
        p.frame: (p.info["seq"], p.info["ack"], p.info["flag"], p.info["len"], p.info.get("crc32c"))
        for p in stacklab.decode(path, only="rudp")
        if p.info is not None
    }


@pytest.mark.parametrize("name", SEED_NAMES)
def test_pyshark_slrudp_fields_equal_stacklab_decode(name: str) -> None:
    path = seed_capture(name)
    packets = sp.packets(path, display_filter="slrudp")
    assert _pyshark_rudp(packets) == _decode_rudp(path)


def test_negotiated_capture_shows_crc_and_options_like_decode() -> None:
    path = REPO / "captures" / "rudp-negotiated.pcapng"
    packets = sp.packets(path, display_filter="slrudp")
    assert _pyshark_rudp(packets) == _decode_rudp(path)
    syn = packets[0].slrudp
    assert syn.flag == "S"
    assert syn.get_field("options.window") == "256"
    assert syn.get_field("options.integrity") in ("1", "True")


def test_works_inside_a_running_event_loop() -> None:
    """As in a notebook: the caller's loop is running while pyshark reads."""
    path = seed_capture("part4_rudp_loss_flow")

    async def inside() -> int:
        running = asyncio.get_running_loop()
        packets = sp.packets(path, display_filter="slrudp")
        assert asyncio.get_running_loop() is running
        return len(packets)

    assert asyncio.run(inside()) == len(_decode_rudp(path))


def test_file_capture_iterates_outside_a_loop_without_phantom_layers() -> None:
    path = seed_capture("part3_rudp_clean_flow")
    capture = sp.file_capture(path, display_filter="slrudp")
    try:
        flags = [packet.slrudp.flag for packet in capture]
        names = {layer.layer_name for packet in capture for layer in packet.layers}
    finally:
        capture.close()
    assert flags[:3] == ["S", "A", "D"]
    assert "slrudp" in names and not names & {"_ws.lua.fake", "DATA", "fake-field-wrapper"}


def test_unknown_field_in_a_display_filter_is_a_clear_error() -> None:
    with pytest.raises(sp.DisplayFilterError, match=r"slrudp\.nosuch is neither a field"):
        sp.file_capture(seed_capture("part4_rudp_loss_flow"), display_filter="slrudp.nosuch")


def test_dissector_is_written_once_to_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = sp.dissector_path()
    mtime = first.stat().st_mtime_ns
    assert sp.dissector_path() == first and first.stat().st_mtime_ns == mtime
    assert first.parent == tmp_path / "stacklab"


def test_a_file_tshark_cannot_read_is_one_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.pcapng"
    bogus.write_text("not a capture")
    with pytest.raises(sp.TsharkError, match=r"tshark failed on .*notes\.pcapng"):
        sp.packets(bogus)
    with pytest.raises(FileNotFoundError, match="no such file"):
        sp.packets(tmp_path / "missing.pcapng")


def test_live_capture_is_set_up_like_a_file_capture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    capture = sp.live_capture("lo", ports=Ports(rudp=9122), display_filter="slrudp")
    try:
        params = capture.get_parameters()
    finally:
        capture.eventloop.close()
    assert f"lua_script:{sp.dissector_path(Ports(rudp=9122))}" in params
    assert "slrudp.port:9122" in params and "sldns.port:5353" in params
    assert capture.use_json
    with pytest.raises(sp.DisplayFilterError, match="neither a field"):
        sp.live_capture("lo", display_filter="slrudp.nosuch")
