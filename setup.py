"""Build stacklab, compiling the capture hot path with mypyc when possible.

``stacklab verify`` spends its time in two modules, the capture scan and the
RUDP tracker.  They are plain, fully typed Python; mypyc compiles them to C
extensions that run the same code several times faster.  Without mypyc or a
C compiler, or with ``STACKLAB_PURE=1`` in the environment, stacklab installs
as pure Python and gives the same results, more slowly.

mypyc names modules after their path, and stacklab's packages live in
top-level folders (``analysis/`` is ``stacklab.analysis``), so the sources
are compiled from a tree of symbolic links laid out like the installed
package.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
COMPILED = [
    "analysis/scan.py",
    "analysis/rudp.py",
    "analysis/rudp_window.py",
    "analysis/rudp_recovery.py",
    "analysis/rudp_goback.py",
]
SUBPACKAGES = ["layers", "services", "analysis", "transport", "tools"]
TREE = Path("build") / "mypyc-src"
GROUP = "stacklab.analysis._native"  # the shared library of the compiled modules


def _say(message: str) -> None:
    sys.stderr.write(f"stacklab: {message}\n")


def _inplace_builds() -> list[Path]:
    """The compiled modules built in place, next to their sources."""
    names = [Path(path).stem for path in COMPILED] + [GROUP.rpartition(".")[2] + "__mypyc"]
    return [built for name in names for built in (ROOT / "analysis").glob(f"{name}.*.so")]


def _remove_inplace_builds() -> None:
    """Compiled modules left in place: Python would import them before the sources."""
    for built in _inplace_builds():
        built.unlink()


class OptionalBuildExt(build_ext):
    """Build the compiled modules if the machine can; otherwise stay pure Python.

    A failed compilation leaves no compiled module behind: a shim without
    its shared library would not import.
    """

    def run(self) -> None:
        try:
            super().run()
            if self.inplace:
                # Unchanged C is not recompiled: mark the modules current anyway,
                # so that a check of their age against the sources holds.
                for built in _inplace_builds():
                    built.touch()
        except Exception as exc:  # compiler missing or failing: the pure-Python path works
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            _remove_inplace_builds()
            _say(f"compiling the hot path failed ({exc}); installing it as pure Python")


def _link_tree() -> Path:
    """build/mypyc-src/stacklab: the installed layout, as symbolic links to the sources."""
    tree = ROOT / TREE
    shutil.rmtree(tree, ignore_errors=True)
    package = tree / "stacklab"
    package.mkdir(parents=True)
    for entry in (ROOT / "stacklab").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for sub in SUBPACKAGES:
        (package / sub).symlink_to(ROOT / sub)
    return tree


def _native_extensions() -> list[Extension]:
    if os.environ.get("STACKLAB_PURE"):
        _remove_inplace_builds()
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _say("mypyc not found, installing the hot path as pure Python")
        return []
    tree = _link_tree()
    # mypy finds the package (and names the modules) from the link tree.
    os.environ["MYPYPATH"] = str(tree)
    sources = [str(TREE / "stacklab" / path) for path in COMPILED]
    try:
        return mypycify(sources, opt_level="3", group_name=GROUP)
    except (Exception, SystemExit) as exc:  # mypyc refused the code (a newer mypy, say)
        _remove_inplace_builds()
        _say(f"mypyc cannot compile the hot path ({exc}); installing it as pure Python")
        return []


setup(ext_modules=_native_extensions(), cmdclass={"build_ext": OptionalBuildExt})
