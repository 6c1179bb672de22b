"""The README's Python examples run, and print what the README says they print.

Every ```python block of the README is executed in order, in one namespace,
from the repository's folder (as a reader would run them); when a ```text
block follows it, the block's output must be exactly that text.  Blocks
that use ``stacklab.pyshark`` need tshark.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil

import pytest

from conftest import REPO

BLOCK = re.compile(r"```python\n(.*?)```\n(?:\s*```text\n(.*?)```)?", re.DOTALL)


def readme_examples() -> list[tuple[str, str | None]]:
    """(code, expected output or None) for each python block of the README."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def test_the_readme_has_examples_with_their_output() -> None:
    examples = readme_examples()
    assert len(examples) >= 6
    assert all(expected is not None for _code, expected in examples)
    assert any("stacklab.verify(" in code for code, _ in examples)
    assert any("stacklab.pyshark" in code for code, _ in examples)


@pytest.mark.timeout(180)
def test_readme_python_blocks_run_and_print_what_the_readme_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)
    namespace: dict[str, object] = {"__name__": "readme"}
    ran = 0
    for index, (code, expected) in enumerate(readme_examples()):
        if "stacklab.pyshark" in code and shutil.which("tshark") is None:
            continue  # the only blocks that need a system tool
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)
        if expected is not None:
            assert out.getvalue() == expected, f"README python block {index + 1}"
        ran += 1
    assert ran >= 5
