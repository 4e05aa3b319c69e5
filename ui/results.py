"""Pruning runs in the session: the store of finished results, the estimate before a run, and
the loop that runs a list of methods with a progress bar each.

Session-state keys (see also ``ui.state``):

- ``results``: ``dict[str, Run]``, every finished result of this session, oldest first, keyed
  by ``run_key`` (a digest of the layer's content, the geometry, nnz, the method, its options
  and the row sample), so asking again for the same run is instant.
- ``last_run``: ``list[dict]``, one entry per method of the latest Run click: ``method``,
  ``status`` (``"done" | "cached" | "failed" | "refused" | "stopped"``), ``key`` or ``message``.
- ``run_pending``: ``list[str]`` of methods still to run while a run is in progress; left
  non-empty when the user stops a run (the next script run reports them as stopped).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import streamlit as st
import torch

from obsviz import Geometry, PruneResult, metrics, prune, save_pruned
from obsviz.estimate import format_bytes, time_estimate
from obsviz.figures import results as rfig
from obsviz.layout import row_sample
from obsviz.prune import C_DTYPES

from ui.facts import memory_fits
from ui.layers import ActiveLayer

#: Methods each option applies to (options other methods ignore stay out of their cache key).
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "split": ("n_splits",),
    "interleaved": ("n_splits",),
    "true_obs": ("ng", "chunk_size", "order", "scoring", "c_dtype"),
}
DEFAULT_OPTIONS = {"n_splits": 4, "ng": 8, "chunk_size": 16, "order": "left_to_right",
                   "scoring": "independent", "c_dtype": "auto"}
DEFAULT_METHODS = ["full", "interleaved", "true_obs", "sparsegpt"]
#: What "Run the fast modes" runs (true_obs only where it is quick, see ``fast_methods``).
FAST_METHODS = ["magnitude", "full", "interleaved", "true_obs", "sparsegpt"]
MAX_STORED = 32  # oldest results are dropped beyond this (each holds a pruned copy of W)


@dataclass(frozen=True)
class Job:
    """What a run prunes with, the same for every method of one Run click."""

    layer: ActiveLayer
    geometry: Geometry        # .nnz is ignored; ``nnz`` is the budget
    nnz: int
    damp: float = 0.01
    device: str = "cpu"
    options: dict = field(default_factory=lambda: dict(DEFAULT_OPTIONS))
    sample: tuple[str, int] | None = None   # ("first", N) or ("every", k); None = all rows

    def rows(self) -> torch.Tensor | None:
        if self.sample is None:
            return None
        how, n = self.sample
        return row_sample(self.geometry, **{how: n})

    def method_options(self, method: str) -> dict:
        return {k: self.options[k] for k in METHOD_OPTIONS.get(method, ())}


@dataclass
class Run:
    """One finished result and everything it was run on."""

    key: str
    job: Job
    method: str
    result: PruneResult       # tensors on the CPU
    report: dict              # obsviz.metrics.summarize(...)
    label: str = ""

    @property
    def layer(self) -> ActiveLayer:
        return self.job.layer


def run_key(job: Job, method: str) -> str:
    spec = {"layer": job.layer.digest, "geometry": job.geometry.key, "nnz": job.nnz,
            "method": method, "damp": job.damp, "device": job.device,
            "options": job.method_options(method), "sample": job.sample}
    return hashlib.blake2b(json.dumps(spec, sort_keys=True).encode(), digest_size=12).hexdigest()


def c_dtype(name: str) -> torch.dtype | None:
    return None if name == "auto" else C_DTYPES[name]


def c_dtype_options(device: str) -> list[str]:
    """C dtypes worth offering on ``device``: ``auto`` first, then one name per dtype.

    Half precision is a GPU format: on the CPU it is emulated and many times slower than
    float32, so the CPU gets only 32 and 64 bits.
    """
    on_cuda = torch.device(device).type == "cuda"
    # one name per dtype, torch's own ("float16", not the aliases "fp16", "half")
    canonical = [n for n, d in C_DTYPES.items() if n == str(d).removeprefix("torch.")]
    return ["auto", *(n for n in canonical if on_cuda or torch.finfo(C_DTYPES[n]).bits >= 32)]


def describe(job: Job, method: str) -> str:
    """``true_obs (ng=8)``: the method and the options that set it apart."""
    opts = job.method_options(method)
    shown = {k: v for k, v in opts.items() if k in ("n_splits", "ng") or v != DEFAULT_OPTIONS[k]}
    text = method + (f" ({', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else "")
    return text


def sample_text(sample: tuple[str, int] | None) -> str:
    if sample is None:
        return "all rows"
    how, n = sample
    return f"first {n} rows" if how == "first" else f"every {n}th row"


# ---- the store --------------------------------------------------------------------------------


def store() -> dict[str, Run]:
    return st.session_state.setdefault("results", {})


def _add(run: Run) -> None:
    runs = store()
    runs.pop(run.key, None)
    runs[run.key] = run
    while len(runs) > MAX_STORED:
        runs.pop(next(iter(runs)))
    relabel()


def relabel() -> None:
    """Give every stored run a short label, unique in the store: the method and its options,
    then (only where it is needed to tell runs apart) the geometry, the row sample, the layer."""
    runs = list(store().values())
    for run in runs:
        run.label = describe(run.job, run.method)
    extras = (
        lambda r: r.job.geometry.name or "free-form",
        lambda r: f"nnz={r.job.nnz}",
        lambda r: sample_text(r.job.sample),
        lambda r: f"damp={r.job.damp:g}",
        lambda r: r.job.device,
        lambda r: r.layer.label,
    )
    for extra in extras:
        by_label: dict[str, list[Run]] = {}
        for run in runs:
            by_label.setdefault(run.label, []).append(run)
        for same in by_label.values():
            if len(same) > 1 and len({extra(r) for r in same}) > 1:
                for r in same:
                    r.label = f"{r.label} · {extra(r)}"


# ---- estimates --------------------------------------------------------------------------------


def estimate(job: Job, methods: list[str]) -> list[dict]:
    """Per method: memory needed, free memory, rough seconds, and whether it fits."""
    rows = job.rows()
    n_rows = None if rows is None else int(rows.numel())
    table = memory_fits(job.geometry, methods, job.device, rows=n_rows,
                        chunk_size=job.options["chunk_size"],
                        c_dtype=c_dtype(job.options["c_dtype"]))
    for entry in table:
        entry["seconds"] = time_estimate(job.geometry, entry["method"], rows=n_rows,
                                         device=job.device, n_splits=job.options["n_splits"])
    return table


def fast_methods(job: Job, budget_s: float = 10.0) -> list[str]:
    """``FAST_METHODS``, without ``true_obs`` when it would take longer than ``budget_s``."""
    quick = []
    for method in FAST_METHODS:
        if method == "true_obs" and time_estimate(job.geometry, method, device=job.device
                                                  ) > budget_s:
            continue
        quick.append(method)
    return quick


# ---- running ----------------------------------------------------------------------------------


def note_stopped() -> None:
    """Report methods a stopped run left unrun (call once at the top of the page)."""
    ss = st.session_state
    pending = ss.get("run_pending") or []
    if pending:
        ss["last_run"] = [e for e in ss.get("last_run", []) if e["method"] not in pending] + [
            {"method": m, "status": "stopped", "message": "stopped before it finished"}
            for m in pending]
        ss["run_pending"] = []


def run_methods(job: Job, methods: list[str]) -> list[dict]:
    """Run ``methods`` one after the other, each in its own status box with a progress bar.

    Each finished result is stored before the next method starts, so stopping the run (any
    click makes Streamlit rerun the page) keeps what is done. A method that fails, whatever the
    error, or would not fit shows why and the others go on. Returns the run's ``last_run``
    entries.
    """
    ss = st.session_state
    ss["last_run"] = []
    ss["run_pending"] = list(methods)
    rows = job.rows()
    for method in methods:
        label = describe(job, method)
        entry: dict = {"method": method, "label": label}
        with st.status(f"{label}: waiting…", expanded=True) as box:
            # Exception, not BaseException: Streamlit's Stop/Rerun (ScriptControlException) must
            # pass through, leaving ``run_pending`` for ``note_stopped`` to report.
            try:
                entry |= _run_or_refuse(job, method, rows, label, box)
            except Exception as err:
                entry |= _failed(method, label, box, f"{type(err).__name__}: {err}")
        ss["last_run"].append(entry)
        ss["run_pending"] = [m for m in ss["run_pending"] if m != method]
    return ss["last_run"]


def _run_or_refuse(job: Job, method: str, rows: torch.Tensor | None, label: str, box) -> dict:
    key = run_key(job, method)
    if key in store():
        box.update(label=_done_text(label, store()[key], cached=True), state="complete",
                   expanded=False)
        return {"status": "cached", "key": key}
    fit = estimate(job, [method])[0]   # free memory as it is now, after the methods before
    if not fit["fits"]:
        message = (f"needs about {format_bytes(fit['memory'])} but "
                   f"{format_bytes(fit['free'])} is free on {job.device}; try a row "
                   "sample (first N rows) or a smaller chunk size")
        st.error(f"{method} was not run: {message}.", icon="⚠️")
        box.update(label=f"{label}: would not fit in memory", state="error")
        return {"status": "refused", "message": message}
    return _run_one(job, method, key, rows, label, box)


def release_device_memory(device: str) -> None:
    """Hand cached GPU blocks back after a method, so the next one (and the estimate of free
    memory) starts from what is really in use. Nothing to do on the CPU."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _run_one(job: Job, method: str, key: str, rows: torch.Tensor | None, label: str,
             box) -> dict:
    bar = st.progress(0.0, "starting")
    last = [0.0]

    def progress(fraction: float, message: str) -> None:
        now = time.perf_counter()
        if now - last[0] > 0.15 or fraction >= 1.0:   # a few updates a second, not thousands
            last[0] = now
            bar.progress(min(max(float(fraction), 0.0), 1.0), message)

    box.update(label=f"{label}: running on {job.device}…", state="running")
    W, H = job.layer.layer.weight, job.layer.layer.hessian
    try:
        result = prune(W, H, job.geometry, job.nnz, method=method, damp=job.damp,
                       device=job.device, progress=progress, rows=rows,
                       c_dtype=c_dtype(job.options["c_dtype"]),
                       **{k: v for k, v in job.method_options(method).items() if k != "c_dtype"})
        report = metrics.summarize(W, H, job.geometry, result)
    except torch.cuda.OutOfMemoryError:
        message = (f"ran out of memory on {job.device}; try a row sample (first N rows or "
                   "every k-th row) or a smaller chunk size")
    except Exception as err:
        message = str(err) if isinstance(err, ValueError | NotImplementedError) \
            else f"{type(err).__name__}: {err}"
    else:
        report["device"] = job.device
        report["layer"] = job.layer.label
        _add(Run(key, job, method, result, report))
        bar.empty()
        box.update(label=_done_text(label, store()[key]), state="complete", expanded=False)
        return {"status": "done", "key": key}
    finally:
        release_device_memory(job.device)
    bar.empty()
    return _failed(method, label, box, message)


def _failed(method: str, label: str, box, message: str) -> dict:
    st.error(f"{method} failed: {message}", icon="⚠️")
    box.update(label=f"{label}: failed", state="error", expanded=True)
    return {"status": "failed", "message": message}


def _done_text(label: str, run: Run, cached: bool = False) -> str:
    seconds = "cached" if cached else f"{run.result.seconds:.2f} s"
    return f"{label} · relative error {run.result.rel_error:.4f} · {seconds}"


# ---- for the Compare page ---------------------------------------------------------------------


@st.cache_resource(max_entries=12, show_spinner="Computing error maps…")
def maps(key: str, _run: Run) -> rfig.ResultMaps:
    """A stored run's maps (error contribution, mask, |ΔW|, per-row error), once per run."""
    layer = _run.layer.layer
    return rfig.result_maps(layer.weight, layer.hessian, _run.result.weight, _run.result.mask,
                            _run.result.rows)


def safetensors_bytes(run: Run) -> bytes:
    """The pruned layer as ``obsviz.save_pruned`` writes it (weight, mask, Hessian, report), so
    ``obsviz.load_layer`` reads the download back."""
    layer = run.layer.layer
    return save_pruned(None, run.result, hessian=layer.hessian, name=layer.name,
                       report=run.report, nsamples=layer.nsamples,
                       source=f"{run.layer.label}, pruned ({run.label or run.method})")


REPORT_COLUMNS = ("label", "method", "layer", "rel_error", "row_rel_error_p50",
                  "row_rel_error_p90", "row_rel_error_p99", "row_rel_error_max", "sparsity",
                  "valid", "bad_blocks", "bad_scopes", "seconds", "device", "rows")


def report_rows(runs: list[Run]) -> list[dict]:
    """The metrics table: ``summarize``'s report of each run, plus its label."""
    return [{"label": r.label, **r.report} for r in runs]


def report_csv(runs: list[Run]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*REPORT_COLUMNS, "geometry", "options"],
                            extrasaction="ignore")
    writer.writeheader()
    for row in report_rows(runs):
        writer.writerow({**row, "geometry": json.dumps(row["geometry"]),
                         "options": json.dumps(row["options"], default=str)})
    return out.getvalue()


def report_json(runs: list[Run]) -> str:
    return json.dumps(report_rows(runs), indent=2, default=str)
