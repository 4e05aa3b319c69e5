"""The seed library (``sparsekit`` from PyPI), for side-by-side benchmarks only.

It is never a dependency of obsviz: :func:`load` installs the pinned version into
``benchmarks/_seed/`` (git-ignored) with ``pip --target`` the first time, and imports it from
there. Its import needs ``triton``; where that is missing (CPU machines) a stand-in that only
satisfies the import is put on the path (``benchmarks/stand_ins/``).
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

VERSION = "0.1.5"
HERE = Path(__file__).resolve().parent
TARGET = HERE / "_seed"


def load():
    """The ``sparsekit`` module, installed on first use."""
    if not (TARGET / "sparsekit").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", str(TARGET), f"sparsekit=={VERSION}"], check=True)
    if importlib.util.find_spec("triton") is None:
        sys.path.insert(0, str(HERE / "stand_ins"))
    if str(TARGET) not in sys.path:
        sys.path.insert(0, str(TARGET))
    return importlib.import_module("sparsekit")
