"""Whole-model what-if on all-MiniLM-L6-v2: end metrics and seconds of each method, as ratios to
SparseGPT measured in the same run.

    python benchmarks/bench_model.py                       # 2:4, coupled-2:4, block16
    python benchmarks/bench_model.py --geometries 2:4 --methods sparsegpt true_obs --no-mlp-down

The target Linears are pruned in sequence (H from the pruned-so-far model) on the shipped
calibration text (Jargon File); the end metrics are measured on the shipped held-out text (The
Devil's Dictionary). `2:4` and `coupled-2:4` prune all 36 Linear layers of the 6 blocks (query,
key, value, attention output, MLP up and MLP down), `block16` the 12 MLP layers (up, 1536 × 384,
and down, 384 × 1536). `--no-mlp-down` leaves the MLP down projections (K = 1536) dense: `true_obs`
costs O(M·K³), so one of them costs it far more than a K = 384 layer of the same M. Writes the raw
numbers as JSON (default: benchmarks/results/model.json) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

# Sleeping OpenMP workers, as obsviz sets when imported first: spinning ones starve each other on
# a busy machine (and inflate CPU time).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from obsviz.calibrate import minilm_checkpoint_dir  # noqa: E402
from obsviz.metrics import format_rel_error  # noqa: E402
from obsviz.model import CALIBRATION_TEXT, HELD_OUT_TEXT, ModelRun, Plan, run_methods  # noqa: E402

METHODS = ["magnitude", "wanda", "sparsegpt", "interleaved", "true_obs"]
MLP_DOWN = "*.[0-9].output.dense"     # encoder.layer.N.output.dense (not attention.output.dense)


def plan_for(geometry: str, all_layers: bool, blocks: int = 6) -> Plan:
    later = tuple(f"*.layer.{b}.*" for b in range(blocks, 6))   # blocks left dense
    if geometry == "block16":
        mlp = ("*.intermediate.dense", MLP_DOWN) if all_layers else ("*.intermediate.dense",)
        return Plan(geometry, include=mlp, exclude=later)
    return Plan(geometry, exclude=later + (() if all_layers else (MLP_DOWN,)))


def markdown_table(results: dict) -> str:
    """One row per (geometry, method): end metrics, and ratios to SparseGPT of the same run:
    (1 − cosine), the last hidden state's error, wall and CPU seconds of the pruning; and the
    pruning seconds estimated before the run (``obsviz.estimate``, what the Model page and
    ``obsviz model`` show) over the seconds the layers' pruning took (the forward passes that
    gather each H and measure the model are not in the estimate, as the page says)."""
    lines = ["| geometry | method | cosine | last hidden error | drift, block 0 | "
             "(1 − cos) ÷ SparseGPT | hidden error ÷ SparseGPT | seconds | time ÷ SparseGPT | "
             "CPU time ÷ SparseGPT | estimate ÷ pruning seconds |", "|---" * 11 + "|"]
    for geometry, report in results.items():
        ref = report["methods"].get("sparsegpt")
        for m, e in report["methods"].items():
            est = report.get("estimate", {}).get(m)
            pruning = sum(layer["seconds"] for layer in e["layers"])
            est_ratio = "–" if est is None or not pruning else f"{est / pruning:.2f}"
            cos, err = e["metrics"]["cosine"], e["metrics"]["last_hidden_rel_error"]
            ratios = ["–"] * 4
            if ref:
                rc, re_ = ref["metrics"]["cosine"], ref["metrics"]["last_hidden_rel_error"]
                ratios = [f"{(1 - cos) / (1 - rc):.3f}", f"{err / re_:.3f}",
                          f"{e['seconds'] / ref['seconds']:.1f}",
                          f"{e['cpu_seconds'] / ref['cpu_seconds']:.1f}"
                          if ref.get("cpu_seconds") else "–"]
            lines.append(f"| {geometry} | {m} | {cos:.4f} | {format_rel_error(err)} | "
                         f"{format_rel_error(e['drift'][0])} | {ratios[0]} | {ratios[1]} | "
                         f"{e['seconds']:.0f} | {ratios[2]} | {ratios[3]} | "
                         f"{est_ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometries", nargs="+", default=["2:4", "coupled-2:4", "block16"])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--no-mlp-down", action="store_true",
                        help="leave the MLP down projections (K = 1536) dense")
    parser.add_argument("--blocks", type=int, default=6, help="prune the first N blocks only")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--max-eval-tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "model.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = ModelRun.from_dir(minilm_checkpoint_dir(), CALIBRATION_TEXT.read_text(),
                            HELD_OUT_TEXT.read_text(), max_tokens=args.max_tokens,
                            max_eval_tokens=args.max_eval_tokens, device=args.device,
                            name="all-MiniLM-L6-v2")
    results = {}
    t0 = time.perf_counter()
    for geometry in args.geometries:
        def progress(f, msg, g=geometry):
            print(f"\r{g:12s} {f:6.1%} {msg[:80]:80s}", end="", flush=True)
        def save(method, entry):   # the numbers so far, kept after every method
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))

        results[geometry] = {}
        run_methods(run, plan_for(geometry, not args.no_mlp_down, args.blocks), args.methods,
                    progress=progress,
                    on_method=save, into=results[geometry])
        print()
    print(f"\n{run.describe()}\ntotal {time.perf_counter() - t0:.0f} s, "
          f"torch threads {torch.get_num_threads()}\n")
    print(markdown_table(results))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
