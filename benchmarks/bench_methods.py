"""Relative error and seconds of every preset × method on the sample layers.

    python benchmarks/bench_methods.py                    # 384-column sample layers, all methods
    python benchmarks/bench_methods.py --layers layer0.mlp_down --methods true_obs sparsegpt

Prints a Markdown table of ratios against SparseGPT (measured in the same run) and writes the raw
numbers as JSON (default: benchmarks/results/methods.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from obsviz.bench import bench_methods, markdown_table
from obsviz.estimate import METHODS
from obsviz.geometry import PRESETS

DEFAULT_LAYERS = ["layer0.query", "layer0.attn_out", "layer5.value", "layer0.mlp_up"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=DEFAULT_LAYERS)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "methods.json")
    args = parser.parse_args()
    report = bench_methods(args.layers, args.presets, args.methods, args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print()
    print(markdown_table(report))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
