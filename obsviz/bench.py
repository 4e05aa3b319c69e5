"""Benchmarks: relative error and seconds of every preset × method on real layers, reported as
ratios measured in one run (the machines we run on are shared and noisy)."""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence

import torch

from obsviz.estimate import METHODS
from obsviz.geometry import PRESETS, Geometry
from obsviz.layers import load_layer, load_sample_layer
from obsviz.prune import prune, resolve_device

#: The method the ratios are taken against.
BASELINE = "sparsegpt"


def bench_methods(layers: Sequence[str], presets: Sequence[str] = PRESETS,
                  methods: Sequence[str] = METHODS, device: str | None = None,
                  layer_file: str | None = None, options: dict | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Prune each layer with each preset × method; return a JSON-able report."""
    dev = resolve_device(device)
    options = options or {}
    rows = []
    for name in layers:
        layer = load_layer(layer_file, name) if layer_file else load_sample_layer(name)
        for preset in presets:
            geom = Geometry.preset(preset, tuple(layer.weight.shape))
            for method in methods:
                res = prune(layer.weight, layer.hessian, geom, geom.nnz, method=method,
                            device=dev, **options)
                rows.append({"layer": name, "preset": preset, "method": method,
                             "rel_error": res.rel_error, "seconds": res.seconds,
                             "selection": res.options.get("selection")})
                log(f"{name:16s} {preset:12s} {method:12s} rel_error {res.rel_error:.4f}  "
                    f"{res.seconds:7.2f} s")
    _add_ratios(rows)
    return {"device": dev.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "options": options, "results": rows}


def _add_ratios(rows: list[dict]) -> None:
    ref = {(r["layer"], r["preset"]): r for r in rows if r["method"] == BASELINE}
    for r in rows:
        base = ref.get((r["layer"], r["preset"]))
        if base:
            r["error_vs_sparsegpt"] = r["rel_error"] / base["rel_error"]
            r["time_vs_sparsegpt"] = r["seconds"] / max(base["seconds"], 1e-9)


def markdown_table(report: dict) -> str:
    """Mean over layers of error and time ratios, one row per preset × method."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in report["results"]:
        groups.setdefault((r["preset"], r["method"]), []).append(r)
    lines = ["| preset | method | rel. error (mean) | error ÷ SparseGPT | time ÷ SparseGPT |",
             "|---|---|---|---|---|"]
    for (preset, method), rs in groups.items():
        err = sum(r["rel_error"] for r in rs) / len(rs)
        ratio = [r.get("error_vs_sparsegpt") for r in rs]
        tratio = [r.get("time_vs_sparsegpt") for r in rs]
        er = f"{sum(ratio) / len(ratio):.3f}" if None not in ratio else "–"
        tr = f"{sum(tratio) / len(tratio):.1f}" if None not in tratio else "–"
        lines.append(f"| {preset} | {method} | {err:.4f} | {er} | {tr} |")
    return "\n".join(lines)
