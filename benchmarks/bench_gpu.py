"""Every method at the S3 paper's layer shape on a GPU (default 2560 × 9728, 2:4).

    python benchmarks/bench_gpu.py                                 # CUDA, every mode, 2:4
    python benchmarks/bench_gpu.py --device cpu --shape 256 1024   # a small dry run

H comes from synthetic but real-looking activations: a low-rank correlated part with a decaying
spectrum, heavy-tailed (Student t, 3 degrees of freedom) samples, log-normal channel scales and a
few outlier channels, as LLM MLP inputs look; N = 4·K samples by default. W is Gaussian with
log-normal row and column scales. Seeds are fixed, so every run prunes the same layer.

Reference figures for this shape on a GPU (the S3 paper): true_obs 11.87 % error in 105 s,
SparseGPT 14.12 % in 1.1 s, interleaved (64 splits) 14.16 % in 6 s. Prints a Markdown table and
writes JSON (default: benchmarks/results/gpu.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from obsviz.geometry import Geometry  # noqa: E402
from obsviz.hessian import HessianAccumulator  # noqa: E402
from obsviz.metrics import format_rel_error  # noqa: E402
from obsviz.prune import prune  # noqa: E402

MODES = ["sparsegpt", "local", "full", "split", "interleaved", "true_obs"]


def activations_hessian(K: int, n_samples: int, device: str, seed: int = 0,
                        batch: int = 4096) -> torch.Tensor:
    """``H = XᵀX / N`` of correlated, heavy-tailed synthetic activations ``X`` ``(N, K)``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rank = min(K, 256)
    spectrum = torch.logspace(0, -2, rank)                          # decaying correlations
    mix = (torch.randn(rank, K, generator=gen) * spectrum[:, None]).to(device)
    scale = torch.exp(0.5 * torch.randn(K, generator=gen))           # log-normal channels
    outliers = torch.randperm(K, generator=gen)[:max(1, K // 500)]
    scale[outliers] *= 20.0
    scale = scale.to(device)
    student = torch.distributions.StudentT(torch.tensor(3.0))
    acc = HessianAccumulator(K, dtype=torch.float32, device=device)
    done = 0
    while done < n_samples:
        n = min(batch, n_samples - done)
        z = student.sample((n, rank)).to(device)
        noise = 0.5 * student.sample((n, K)).to(device)
        acc.add(((z @ mix) + noise) * scale)
        done += n
    return acc.result()


def weight(M: int, K: int, device: str, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    W = torch.randn(M, K, generator=gen) * 0.02
    W *= torch.exp(0.3 * torch.randn(M, 1, generator=gen))
    W *= torch.exp(0.3 * torch.randn(1, K, generator=gen))
    return W.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=2, type=int, default=[2560, 9728])
    parser.add_argument("--preset", default="2:4")
    parser.add_argument("--modes", nargs="+", default=MODES)
    parser.add_argument("--samples", type=int, default=None, help="N (default 4·K)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n-splits", type=int, default=64)
    parser.add_argument("--ng", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=128,
                        help="true_obs rows per chunk (each holds a K × K C)")
    parser.add_argument("--c-dtype", default=None, help="true_obs C dtype (default: fp16 on CUDA)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json")
    args = parser.parse_args()
    M, K = args.shape
    dev = args.device
    cuda = dev.startswith("cuda")
    start = time.perf_counter()
    H = activations_hessian(K, args.samples or 4 * K, dev)
    W = weight(M, K, dev)
    print(f"layer {M}×{K} on {dev}"
          f" ({torch.cuda.get_device_name() if cuda else 'CPU'}), H from {args.samples or 4 * K}"
          f" samples in {time.perf_counter() - start:.1f} s", flush=True)
    geom = Geometry.preset(args.preset, (M, K))
    rows = []
    for mode in args.modes:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        res = prune(W, H, geom, geom.nnz, method=mode, device=dev, n_splits=args.n_splits,
                    ng=args.ng, chunk_size=args.chunk_size, c_dtype=args.c_dtype)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        rows.append({"mode": mode, "rel_error": res.rel_error, "seconds": seconds,
                     "peak_gib": peak, "options": {k: v for k, v in res.options.items()
                                                    if isinstance(v, (int, float, str))}})
        print(f"{mode:12s} {format_rel_error(res.rel_error):>9s} {seconds:8.2f} s"
              + (f"  peak {peak:.1f} GiB" if peak is not None else ""), flush=True)
    print("\n| mode | rel. error | seconds | peak GPU memory |\n|---|---|---|---|")
    for r in rows:
        peak = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "–"
        print(f"| {r['mode']} | {format_rel_error(r['rel_error'])} | {r['seconds']:.2f} | {peak} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"shape": [M, K], "preset": args.preset, "device": dev,
                                    "torch": torch.__version__, "results": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
