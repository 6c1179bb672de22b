"""The streamed ``--json`` document: the same data as ``json.dumps`` of it, written as it goes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from stacklab.analysis.synth import CaptureWriter, benchmark_stream
from stacklab.analysis.unreadable import Unreadable, results_json, write_results_json
from stacklab.analysis.verify import analyze_capture
from stacklab.cli import cli
from stacklab.jsonstream import JsonWriter

from conftest import SEED_DIR

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(alphabet=st.characters(codec="utf-8"))
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


def _generators(value: Any, depth: int = 0) -> Any:
    """The same value with its lists (down to ``depth`` 3) given as generators, as a stream would."""
    if isinstance(value, list) and depth < 3:
        return (_generators(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return {k: _generators(v, depth + 1) for k, v in value.items()}
    return value


def _indented(value: Any) -> str:
    return json.dumps(value, indent=2)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_any_document_reads_back_the_same_keys_in_order(value: Any) -> None:
    out = io.StringIO()
    JsonWriter(out).write(_generators(value))
    assert _indented(json.loads(out.getvalue())) == _indented(value)


def test_a_streamed_list_is_one_item_per_line_and_its_parent_one_member_per_line() -> None:
    out = io.StringIO()
    records = ({"x": [1, 2]} if n else {"y": "z"} for n in (1, 0))
    JsonWriter(out).write({"a": 1, "b": records, "c": (n for n in ())})
    assert out.getvalue() == (
        '{\n  "a": 1,\n  "b": [\n    {"x": [1, 2]},\n    {"y": "z"}\n  ],\n  "c": []\n}'
    )


def test_verify_json_is_the_analyses_document(tmp_path: Path) -> None:
    capture = tmp_path / "many.pcap"
    with CaptureWriter(capture) as writer:
        writer.write_all(benchmark_stream(3_000, seed=3, loss=0.08))
    captures = [capture, *sorted(SEED_DIR.glob("*.pcapng"))]
    analyses = [analyze_capture(p) for p in captures]
    missing = Unreadable(str(tmp_path / "none.pcap"), "cannot read")
    out = io.StringIO()
    write_results_json(analyses, [missing], out)
    text = out.getvalue()
    assert text.endswith("}\n")
    assert _indented(json.loads(text)) == _indented(results_json(analyses, [missing]))
    # the command prints it: every session and check present, one line each
    result = CliRunner().invoke(cli, ["verify", "--json", str(capture)])
    doc = json.loads(result.stdout)
    assert _indented(doc) == _indented(results_json([analyses[0]], []))
    sessions = doc["captures"][0]["rudp_sessions"]
    assert len(sessions) > 10
    lines = result.stdout.splitlines()
    rudp_lines = [
        line for line in lines if line.lstrip().startswith('{"client": ') and '"isn": ' in line
    ]
    assert len(rudp_lines) == len(sessions)
