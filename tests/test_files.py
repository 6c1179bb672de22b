"""Output files are written whole or not at all (fetched content, reports, charts, dissector)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import pytest

from stacklab import files
from stacklab.files import write_atomically


def test_write_atomically(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    write_atomically(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert os.stat(target).st_mode & 0o777 != 0o600  # not mkstemp's private mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_replaced_file_keeps_its_mode_and_a_writer_function_works(tmp_path: Path) -> None:
    target = tmp_path / "plugin.lua"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)

    def write(handle: BinaryIO) -> None:
        handle.write(b"-- a ")
        handle.write(b"script")

    write_atomically(target, write)
    assert target.read_bytes() == b"-- a script"
    assert os.stat(target).st_mode & 0o777 == 0o640


def test_write_atomically_leaves_nothing_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomically(tmp_path / "out.bin", b"data")
    assert list(tmp_path.iterdir()) == []


def test_a_failing_writer_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "page.html"
    target.write_bytes(b"complete old page")

    def write(handle: BinaryIO) -> None:
        handle.write(b"half a ")
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError):
        write_atomically(target, write)
    assert target.read_bytes() == b"complete old page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]
