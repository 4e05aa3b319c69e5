"""true_obs's ``chunk_size`` (rows processed together): seconds of ``obsviz.prune`` for each
value, same layer, torch's default threads. ``0`` is the default: rows chosen from the layer's
shape (``obsviz.methods.chunk_rows``). The chunk never changes the result (the last column is
the relative error of each run).

    python benchmarks/bench_chunk.py [--layers layer0.query layer0.mlp_up layer0.mlp_down]
                                     [--chunk 0 64 128] [--repeat 2]
"""

from __future__ import annotations

import argparse
import time

import torch

import obsviz
from obsviz.methods import chunk_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", nargs="+",
                        default=["layer0.query", "layer0.mlp_up", "layer0.mlp_down"])
    parser.add_argument("--presets", nargs="+", default=["2:4"])
    parser.add_argument("--chunk", nargs="+", type=int, default=[0, 64, 128])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, all printed")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}")
    print("| layer (M × K) | preset | chunk_size | rows per chunk | seconds | error |")
    print("|---|---|---|---|---|---|")
    for name in args.layers:
        layer = obsviz.load_sample_layer(name)
        M, K = layer.weight.shape
        for preset in args.presets:
            geom = obsviz.Geometry.preset(preset, (M, K))
            for chunk in args.chunk:
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    res = obsviz.prune(layer.weight, layer.hessian, geom, nnz=geom.nnz,
                                       method="true_obs", chunk_size=chunk)
                    times.append(time.perf_counter() - t0)
                shown = ", ".join(f"{t:.2f}" for t in times)
                print(f"| {name} ({M} × {K}) | {preset} | {chunk} | {chunk_rows(K, M, chunk)} "
                      f"| {shown} | {res.rel_error:.6f} |", flush=True)


if __name__ == "__main__":
    main()
