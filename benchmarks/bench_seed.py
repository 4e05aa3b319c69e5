"""obsviz against the seed library (sparsekit 0.1.5), side by side on real MiniLM layers.

    python benchmarks/bench_seed.py                      # every layer × preset × mode, best of 3
    python benchmarks/bench_seed.py --layers layer0.mlp_up --presets 2:4 --modes true_obs

Same W, H and geometry for both, damp 0.01, ``split``/``interleaved`` with 4 splits; ``true_obs``
at each library's own defaults (obsviz: ``obsviz.methods``' ``ng``/``chunk_size``; the seed:
``ng=64``, 16-row chunks), independent scoring, left to right, fp32 C (both libraries' CPU
default). Runs of
the two libraries are interleaved and each keeps its best of ``--repeat``. Wall time and CPU time
(``time.process_time``; with one thread it moves far less than wall time on a shared machine) are
both recorded. The seed runs in a child process of its own and is stopped after
``--seed-timeout`` seconds (it loops on some geometries); the parent's threads are the
child's. The seed library is installed into ``benchmarks/_seed/`` on first use (see
``seed.py``); it is never a dependency of obsviz.

Prints a Markdown table (time ratio obsviz ÷ seed, error ratio, geometric mean of the time ratios)
and writes the raw numbers as JSON (default: benchmarks/results/seed.json).

The seed's ``StructuredOBS.prune`` does not couple the rows of a row-coupled scope: on ``block16``
it prunes one of each two neighbouring 16-column blocks of every row (the free-form geometry block
``(1, 16)``, scope ``(1, 2)``), which breaks the preset's scopes. The table flags such masks as
invalid and also compares obsviz on that row-wise geometry (``block16-rowwise``), where the two
solve the same problem.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import seed  # noqa: E402

from obsviz.geometry import Geometry  # noqa: E402
from obsviz.layers import load_sample_layer  # noqa: E402
from obsviz.metrics import rel_error  # noqa: E402
from obsviz.prune import prune  # noqa: E402

LAYERS = ["layer0.mlp_up", "layer0.mlp_down", "layer0.query"]
PRESETS = ["2:4", "coupled-2:4", "block16"]
MODES = ["local", "full", "split", "interleaved", "true_obs"]
N_SPLITS = 4
DAMP = 0.01


def geometry(preset: str, shape: tuple[int, int]) -> Geometry:
    if preset == "block16-rowwise":   # what the seed's prune() computes for block16
        return Geometry(shape, block=(1, 16), scope=(1, 2), name=preset, nnz=1)
    return Geometry.preset(preset, shape)


class SeedProcess:
    """The seed library in a child process of its own, so that a run of it can be stopped: on
    some geometries it does not fail but loops (coupled-2:4 with two threads: MKL prints SLASWP
    errors for many minutes). ``run`` returns what :func:`run_seed` returns, or ``None`` and
    the reason when the run took more than ``timeout`` seconds (the child is then killed and a
    fresh one started for the next run)."""

    def __init__(self, threads: int | None, timeout: float):
        self.threads, self.timeout = threads, timeout
        self.ctx = multiprocessing.get_context("spawn")
        self.proc = None

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=seed_child, args=(child, self.threads), daemon=True)
        self.proc.start()

    def run(self, layer: str, preset: str, mode: str, device: str):
        if self.proc is None or not self.proc.is_alive():
            self.start()
        self.conn.send((layer, preset, mode, device))
        if self.conn.poll(self.timeout):
            return self.conn.recv()
        self.close()
        return None, f"stopped after {self.timeout:.0f} s (no result)"

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
            self.proc = None


def seed_child(conn, threads: int | None) -> None:
    """The child's loop: one seed run per request, on the same layer data as the parent's."""
    if threads:
        torch.set_num_threads(threads)
    sk = seed.load()
    while True:
        layer, preset, mode, device = conn.recv()
        lay = load_sample_layer(layer)
        W, H = lay.weight.float(), lay.hessian.float()
        conn.send(run_seed(sk, W, H, geometry(preset, tuple(W.shape)), mode, device))


def run_seed(sk, W: torch.Tensor, H: torch.Tensor, g: Geometry, mode: str, device: str):
    """Seconds and pruned W of the seed library, or the error it raised."""
    Wc = W.clone().to(device)
    Hc = H.to(device)
    view = sk.View(Wc, g.view_shape, g.view_stride)
    scope = sk.ScopeSpec(sk.BlockSpec(view, g.block), g.scope)
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        obs = sk.StructuredOBS(scope, Hc, damp=DAMP)
        if mode == "true_obs":
            obs.prune_true_obs(g.nnz, order="left_to_right", scoring="independent",
                               c_dtype=torch.float32)
        else:
            obs.prune(g.nnz, compensate=mode, n_splits=N_SPLITS)
    except Exception as exc:  # the seed fails on some geometries: report, go on
        return None, f"{type(exc).__name__}: {str(exc)[:80]}"
    sync(device)
    return (time.perf_counter() - start, time.process_time() - cpu), Wc.cpu()


def run_ours(W: torch.Tensor, H: torch.Tensor, g: Geometry, mode: str, device: str):
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    res = prune(W, H, g, g.nnz, method=mode, damp=DAMP, device=device, n_splits=N_SPLITS,
                order="left_to_right", scoring="independent", c_dtype="float32")
    sync(device)
    return (time.perf_counter() - start, time.process_time() - cpu), res


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def valid_mask(g: Geometry, kept: torch.Tensor) -> bool:
    """Every block kept or pruned whole, every scope keeping ``nnz`` blocks."""
    el = kept.reshape(-1)[g.scope_elements()]                 # (S, gs, bk)
    whole = bool((el.all(-1) | ~el.any(-1)).all())
    return whole and bool((el.all(-1).sum(1) == g.nnz).all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=LAYERS)
    parser.add_argument("--presets", nargs="+", default=PRESETS + ["block16-rowwise"])
    parser.add_argument("--modes", nargs="+", default=MODES)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed-timeout", type=float, default=120,
                        help="seconds one seed run may take before it is stopped")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "seed.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seed.load()   # installed once, here, before the child imports it
    seed_proc = SeedProcess(args.threads, args.seed_timeout)
    rows = []
    for name in args.layers:
        layer = load_sample_layer(name)
        W, H = layer.weight.float(), layer.hessian.float()
        for preset in args.presets:
            g = geometry(preset, tuple(W.shape))
            for mode in args.modes:
                best_s = best_o = (math.inf, math.inf)
                seed_W = seed_err = ours = None
                for _ in range(args.repeat):   # interleaved: seed, obsviz, seed, obsviz, ...
                    s, out = seed_proc.run(name, preset, mode, args.device)
                    if s is None:
                        seed_err = out
                    else:
                        best_s, seed_W = tuple(map(min, best_s, s)), out
                    o, ours = run_ours(W, H, g, mode, args.device)
                    best_o = tuple(map(min, best_o, o))
                row = {"layer": name, "shape": list(W.shape), "preset": preset, "mode": mode,
                       "obsviz_s": best_o[0], "obsviz_cpu_s": best_o[1],
                       "obsviz_error": ours.rel_error,
                       "obsviz_valid": valid_mask(g, ours.mask.cpu())}
                if seed_W is not None:
                    row.update(seed_s=best_s[0], seed_cpu_s=best_s[1],
                               seed_error=rel_error(W, seed_W, H),
                               seed_valid=valid_mask(g, seed_W != 0),
                               time_ratio=best_o[0] / best_s[0],
                               cpu_ratio=best_o[1] / best_s[1])
                    row["error_ratio"] = row["obsviz_error"] / row["seed_error"]
                else:
                    row["seed_failed"] = seed_err
                rows.append(row)
                print(line(row), flush=True)
    seed_proc.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch": torch.__version__, "device": args.device,
                                    "threads": torch.get_num_threads(), "results": rows},
                                   indent=2))
    print()
    print(table(rows))
    print(f"\nwrote {args.out}")


def line(r: dict) -> str:
    if "seed_s" not in r:
        return (f"{r['layer']:16s} {r['preset']:16s} {r['mode']:12s} obsviz {r['obsviz_s']:7.2f} s "
                f"err {r['obsviz_error']:.4f} | seed failed: {r['seed_failed']}")
    return (f"{r['layer']:16s} {r['preset']:16s} {r['mode']:12s} obsviz {r['obsviz_s']:7.2f} s "
            f"err {r['obsviz_error']:.4f} | seed {r['seed_s']:7.2f} s err {r['seed_error']:.4f}"
            f"{'' if r['seed_valid'] else ' (invalid mask)'} | time × {r['time_ratio']:.2f} "
            f"cpu × {r['cpu_ratio']:.2f} error × {r['error_ratio']:.4f}")


def table(rows: list[dict]) -> str:
    out = ["| layer | preset | mode | obsviz s | seed s | time ÷ seed | CPU time ÷ seed | "
           "obsviz error | seed error | error ÷ seed |", "|---" * 10 + "|"]
    ratios, cpu = [], []
    for r in rows:
        shape = "×".join(map(str, r["shape"]))
        if "seed_s" in r:
            flag = "" if r["seed_valid"] else " (invalid mask)"
            out.append(f"| {shape} | {r['preset']} | {r['mode']} | {r['obsviz_s']:.2f} | "
                       f"{r['seed_s']:.2f} | {r['time_ratio']:.2f} | {r['cpu_ratio']:.2f} | "
                       f"{r['obsviz_error']:.4f} | {r['seed_error']:.4f}{flag} | "
                       f"{r['error_ratio']:.4f} |")
            if r["seed_valid"]:
                ratios.append(r["time_ratio"])
                cpu.append(r["cpu_ratio"])
        else:
            out.append(f"| {shape} | {r['preset']} | {r['mode']} | {r['obsviz_s']:.2f} | fails | "
                       f"– | – | {r['obsviz_error']:.4f} | – | – |")
    for label, xs in (("time", ratios), ("CPU time", cpu)):
        if xs:
            gm = math.exp(sum(math.log(x) for x in xs) / len(xs))
            out.append(f"\ngeometric mean of {label} ÷ seed over {len(xs)} comparable runs "
                       f"(valid seed masks): {gm:.2f}; worst {max(xs):.2f}")
    return "\n".join(out)


if __name__ == "__main__":
    main()
