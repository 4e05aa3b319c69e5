"""A sweep on the local executor vs on a local Ray cluster: wall time, and Ray's cost per trial.

    python benchmarks/bench_sweep.py                      # 4 layers × 4 presets × 4 methods
    python benchmarks/bench_sweep.py --first-rows 64 --num-cpus 2

Two grids, each run by both executors into fresh run databases (nothing is skipped):

1. the real grid: 4 MiniLM layers × every preset × 4 methods (64 trials);
2. the same grid on the 8 × 16 toy layer, whose trials cost almost nothing: its wall time per
   trial is each executor's overhead (task submission, object transfer, the row written).

Ray is started once (its start-up is reported apart) and gets ``--num-cpus`` CPUs, one per trial;
its workers run torch with one thread each, so the local executor is timed twice: with this
process's torch threads and with one thread.
Writes the numbers as JSON (default: benchmarks/results/sweep.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

# isort: off
import obsviz  # noqa: F401  - before torch: obsviz sets OMP_WAIT_POLICY=PASSIVE, as in the app
import torch
# isort: on

from obsviz.geometry import PRESETS
from obsviz.sweep import parse_spec, ray_runtime_env, sweep

DEFAULT_LAYERS = ["layer0.query", "layer0.attn_out", "layer5.value", "layer5.key"]
DEFAULT_METHODS = ["magnitude", "wanda", "sparsegpt", "interleaved"]


def grid(layers: list[str], presets: list[str], methods: list[str], first_rows: int | None):
    g = {"presets": presets, "methods": methods}
    if first_rows:
        g["first_rows"] = first_rows
    return parse_spec({"name": "bench", "layers": [{"sample": layers}], "grid": g})


def timed(spec, executor: str, folder: Path, tag: str, threads: int | None = None) -> dict:
    """One sweep into a fresh database; ``threads``: torch threads of this process meanwhile
    (Ray's workers run one thread each)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    db = folder / f"{tag}-{executor}-{threads}.sqlite"
    try:
        t = time.perf_counter()
        rep = sweep(spec, executor=executor, store=db, device="cpu")
        wall = time.perf_counter() - t
    finally:
        torch.set_num_threads(before)
    from obsviz.store import RunStore

    runs = RunStore(db).runs()
    busy = sum(r.seconds or 0.0 for r in runs)
    assert rep.done == rep.total, f"{tag}/{executor}: {rep.failed} trials failed"
    return {"trials": rep.total, "wall_s": wall, "trial_compute_s": busy,
            "per_trial_wall_s": wall / rep.total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=DEFAULT_LAYERS)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--first-rows", type=int, default=None,
                        help="prune only the first rows of each layer (default: all)")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "sweep.json")
    args = parser.parse_args()

    import ray

    real = grid(args.layers, args.presets, args.methods, args.first_rows)
    # the toy grid as big as the real one: the same 4 methods on 4 geometries × 4 damp values
    toy = parse_spec({"name": "bench-toy", "layers": [{"sample": "toy"}],
                      "grid": {"presets": ["2:4", "4:8", "1:8", "2:8"],
                               "methods": args.methods, "damp": [0.01, 0.02, 0.05, 0.1]}})
    out: dict = {"machine": platform.machine(), "cpus": os.cpu_count(),
                 "ray_num_cpus": args.num_cpus, "torch": torch.__version__,
                 "torch_threads": torch.get_num_threads(), "ray": ray.__version__,
                 "layers": args.layers, "presets": args.presets, "methods": args.methods,
                 "first_rows": args.first_rows}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env=ray_runtime_env())
        out["ray_start_s"] = time.perf_counter() - t
        try:
            # warm the workers once (their first import of torch is start-up, not per trial)
            sweep(parse_spec({"layers": [{"sample": "toy"}],
                              "grid": {"presets": ["2:4"], "methods": ["magnitude"],
                                       "damp": [0.3, 0.4, 0.5, 0.6]}}),
                  executor="ray", store=folder / "warm.sqlite", device="cpu")
            for tag, spec in (("real", real), ("toy", toy)):
                for executor, threads in (("local", None), ("local", 1), ("ray", None)):
                    label = executor if threads is None else f"{executor}{threads}"
                    out[f"{tag}_{label}"] = r = timed(spec, executor, folder, tag, threads)
                    print(f"{tag:4s} {label:6s}: {r['trials']} trials, wall "
                          f"{r['wall_s']:.2f} s ({r['per_trial_wall_s'] * 1e3:.1f} ms/trial), "
                          f"compute {r['trial_compute_s']:.2f} s", flush=True)
        finally:
            ray.shutdown()
    out["ray_vs_local_wall"] = out["real_ray"]["wall_s"] / out["real_local"]["wall_s"]
    out["ray_vs_local1_wall"] = out["real_ray"]["wall_s"] / out["real_local1"]["wall_s"]
    # overhead: on the toy grid (trials cost ~nothing), the worker time per trial not spent
    # pruning (submission, the layer fetched, the result sent back; the driver writes the row)
    toy_ray = out["toy_ray"]
    out["ray_overhead_per_trial_s"] = ((toy_ray["wall_s"] * args.num_cpus
                                        - toy_ray["trial_compute_s"]) / toy_ray["trials"])
    print(f"\nRay start-up {out['ray_start_s']:.1f} s; real grid Ray ÷ local wall "
          f"{out['ray_vs_local_wall']:.2f} (÷ local with 1 thread: "
          f"{out['ray_vs_local1_wall']:.2f}); Ray overhead per trial "
          f"{out['ray_overhead_per_trial_s'] * 1e3:.1f} ms of a worker's time")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
