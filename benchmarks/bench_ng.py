"""true_obs's ``ng`` (scope steps per batch): seconds for each value, same layer, same rows.

    python benchmarks/bench_ng.py [--layers layer0.attn_out layer0.mlp_down] [--rows 16]
                                  [--ng 0 8 16] [--threads 1]

``ng`` never changes the result in exact arithmetic (the last column counts the weights whose
mask differs from the first ``ng``'s, from float32 round-off on near-ties), only the speed: the
batch's small system and factor grow with ``ng`` while the number of batches shrinks. The
registry's default (``ng = 0``: ``obsviz.methods.batch_steps``, about
``obsviz.methods.BATCH_PRUNED`` weights of a row pruned per batch) is chosen from these
numbers. ``--rows 0`` prunes every row; ``--threads 0`` keeps torch's default thread count.
"""

from __future__ import annotations

import argparse

import torch

import obsviz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", nargs="+", default=["layer0.attn_out", "layer0.mlp_down"])
    parser.add_argument("--presets", nargs="+", default=["2:4", "coupled-2:4"])
    parser.add_argument("--ng", nargs="+", type=int, default=[8, 16, 32, 64])
    parser.add_argument("--rows", type=int, default=16,
                        help="first rows pruned (what-if); 0: all")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0: its default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}")
    print("| layer (M × K) | preset | " + " | ".join(f"ng={n} (s)" for n in args.ng)
          + " | masks differ |")
    print("|---|---|" + "---|" * (len(args.ng) + 1))
    for name in args.layers:
        layer = obsviz.load_sample_layer(name)
        M, K = layer.shape
        rows = torch.arange(args.rows) if args.rows else None
        for preset in args.presets:
            geom = obsviz.Geometry.preset(preset, layer.shape)
            times, masks = [], []
            for ng in args.ng:
                runs = [obsviz.prune(layer.weight, layer.hessian, geom, geom.nnz,
                                     method="true_obs", ng=ng, rows=rows, device="cpu")
                        for _ in range(args.repeat)]
                times.append(min(r.seconds for r in runs))
                masks.append(runs[0].mask)
            differ = max(int((m != masks[0]).sum()) for m in masks)
            print(f"| {name} ({M} × {K}) | {preset} | "
                  + " | ".join(f"{t:.2f}" for t in times) + f" | {differ} |", flush=True)


if __name__ == "__main__":
    main()
