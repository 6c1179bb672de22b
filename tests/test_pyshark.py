"""stacklab.pyshark: pyshark with the dissector, compared with stacklab's own decode."""

from __future__ import annotations

from pathlib import Path

import pytest

import stacklab
import stacklab.pyshark as sp

from conftest import requires_tshark, seed_capture

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
