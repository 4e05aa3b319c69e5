"""Geometry maps and the pruning layout on a 4096 × 11008 weight (an LLaMA-7B MLP shape).

    python benchmarks/bench_maps.py

Prints seconds per preset for the induced maps (block / scope / position in scope, as the
Geometry page computes them) and for the engine's row-step layout, as ratios to the time of one
full pass over W (``W.abs().sum()``) measured in the same run.
"""

from __future__ import annotations

import time

import torch

from obsviz.figures.geometry import compute_maps
from obsviz.geometry import PRESETS, Geometry
from obsviz.layout import row_steps

SHAPE = (4096, 11008)


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    W = torch.randn(SHAPE)
    unit = min(seconds(lambda: W.abs().sum()) for _ in range(3))
    print(f"one pass over W {SHAPE}: {unit * 1e3:.1f} ms")
    print("| preset | maps (s) | maps ÷ pass | layout (s) | layout ÷ pass |")
    print("|---|---|---|---|---|")
    for preset in PRESETS:
        geom = Geometry.preset(preset, SHAPE)
        t_maps = seconds(lambda g=geom: compute_maps(g))
        t_layout = seconds(lambda g=geom: row_steps(g))
        row_steps.cache_clear()
        print(f"| {preset} | {t_maps:.2f} | {t_maps / unit:.0f} | {t_layout:.2f} | "
              f"{t_layout / unit:.0f} |")


if __name__ == "__main__":
    main()
