"""Before and during a run: the estimate of memory and time per method, and the loop that runs
a list of methods with a progress bar each (stoppable; finished results are kept).

Session-state keys (see also ``ui.state``):

- ``last_run``: ``list[dict]``, one entry per method of the latest Run click: ``method``,
  ``status`` (``"done" | "cached" | "failed" | "refused" | "stopped"``), ``key`` or ``message``.
- ``run_pending``: ``list[str]`` of methods still to run while a run is in progress; left
  non-empty when the user stops a run (the next script run reports them as stopped).
- ``model_run_owner``: the owner of this session's Model run folder (:func:`model_run_dir`);
  when Streamlit drops the session, the folder goes with it.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
import weakref
from pathlib import Path

import streamlit as st
import torch

from obsviz import metrics, prune
from obsviz.estimate import eta_text, format_bytes, time_estimate
from obsviz.methods import C_DTYPES, METHODS, OPTIONS
from obsviz.metrics import format_rel_error
from obsviz.owner import process_token, token_alive

from ui import result_maps
from ui.facts import memory_fits
from ui.labels import describe, relabel
from ui.runs import Job, Run, add, lookup, record_failure, reused_text, run_key, run_store, store
from ui.text import md

#: The methods a fresh Prune page has chosen: the OBS modes that differ most, and SparseGPT.
DEFAULT_METHODS = ["full", "interleaved", "true_obs", "sparsegpt"]


def c_dtype_options(device: str) -> list[str]:
    """``true_obs``'s C dtypes worth offering on ``device`` (``obsviz.methods`` ``c_dtype``
    choices): half precision is a GPU format, emulated many times slower on the CPU, so the CPU
    gets ``auto`` and the 32 and 64 bit ones only."""
    on_cuda = torch.device(device).type == "cuda"
    return [name for name in OPTIONS["c_dtype"].choices
            if name == "auto" or on_cuda or torch.finfo(C_DTYPES[name]).bits >= 32]


# ---- estimates --------------------------------------------------------------------------------


def estimate(job: Job, methods: list[str]) -> list[dict]:
    """Per method: memory needed, free memory, rough seconds, and whether it fits."""
    rows = job.rows()
    n_rows = None if rows is None else int(rows.numel())
    table = memory_fits(job.geometry, methods, job.device, rows=n_rows, options=job.options)
    for entry in table:
        entry["seconds"] = time_estimate(job.geometry, entry["method"], rows=n_rows,
                                         device=job.device, n_splits=job.options["n_splits"])
    return table


def fast_methods(job: Job, budget_s: float = 10.0) -> list[str]:
    """The methods (``obsviz.methods`` order) estimated to take at most ``budget_s`` each on
    ``job``'s layer and device."""
    return [m for m in METHODS if time_estimate(job.geometry, m, device=job.device,
                                                n_splits=job.options["n_splits"]) <= budget_s]


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
    """Run ``methods`` one after the other, each with its own progress bar, all visible from the
    start (waiting, running with the step and the time left, then the outcome).

    Each finished result is stored before the next method starts, so stopping the run (any
    click makes Streamlit rerun the page) keeps what is done. A method that fails, whatever the
    error, or would not fit shows why and the others go on. Returns the run's ``last_run``
    entries.
    """
    ss = st.session_state
    ss["last_run"] = []
    ss["run_pending"] = list(methods)
    rows = job.rows()
    st.caption(f"Running on {md(job.layer.label)} ({job.device}):")
    slots = {method: st.empty() for method in methods}
    for method in methods:
        slots[method].progress(0.0, f"{md(describe(job, method))}: waiting")
    for method in methods:
        label = describe(job, method)
        entry: dict = {"method": method, "label": label}
        slot = slots[method]
        # Exception, not BaseException: Streamlit's Stop/Rerun (ScriptControlException) must
        # pass through, leaving ``run_pending`` for ``note_stopped`` to report.
        try:
            entry |= _run_or_refuse(job, method, rows, label, slot)
        except Exception as err:
            entry |= _failed(method, label, slot, f"{type(err).__name__}: {err}")
        ss["last_run"].append(entry)
        ss["run_pending"] = [m for m in ss["run_pending"] if m != method]
    return ss["last_run"]


def _run_or_refuse(job: Job, method: str, rows: torch.Tensor | None, label: str, slot) -> dict:
    key = run_key(job, method)
    done = lookup(job, method)   # this session's, or the run store's (an earlier session's)
    if done is not None:
        if done.reused_from is not None:   # under this name too, from now on
            add(done)
        relabel()
        slot.success(_done_text(label, done, cached=True), icon=":material/check:")
        return {"status": "cached", "key": key}
    fit = estimate(job, [method])[0]   # free memory as it is now, after the methods before
    if not fit["fits"]:
        message = (f"needs about {format_bytes(fit['memory'])} but "
                   f"{format_bytes(fit['free'])} is free on {job.device}; try a row "
                   "sample (first N rows) or a smaller chunk size")
        slot.error(f"{md(label)} was not run: {message}.", icon="⚠️")
        return {"status": "refused", "message": message}
    return _run_one(job, method, key, rows, label, slot, fit["seconds"])


def release_device_memory(device: str) -> None:
    """Hand cached GPU blocks back after a method, so the next one (and the estimate of free
    memory) starts from what is really in use. Nothing to do on the CPU."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _run_one(job: Job, method: str, key: str, rows: torch.Tensor | None, label: str,
             slot, estimate_s: float | None = None) -> dict:
    start = time.perf_counter()
    last = [0.0]
    shown = md(label)
    bar = slot.progress(0.0, f"{shown}: starting on {job.device} · "
                             f"{eta_text(0.0, 0.0, estimate_s)}")

    def progress(fraction: float, message: str) -> None:
        now = time.perf_counter()
        if now - last[0] > 0.15 or fraction >= 1.0:   # a few updates a second, not thousands
            last[0] = now
            f = min(max(float(fraction), 0.0), 1.0)
            bar.progress(f, f"{shown}: {md(message)} · {f:.0%} · "
                            f"{eta_text(now - start, f, estimate_s)}")

    W, H = job.layer.layer.weight, job.layer.layer.hessian
    try:
        result = prune(W, H, job.geometry, job.nnz, method=method, damp=job.damp,
                       device=job.device, progress=progress, rows=rows,
                       **job.method_options(method))
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
        add(Run(key, job, method, result, report))
        with contextlib.suppress(Exception):   # Compare's maps, while the run is fresh (a
            result_maps.maps(key, store()[key])  # failure here is Compare's to show, not the run's)
        relabel()
        slot.success(_done_text(label, store()[key]), icon=":material/check:")
        return {"status": "done", "key": key}
    finally:
        release_device_memory(job.device)
    record_failure(job, method, message)
    return _failed(method, label, slot, message)


def _failed(method: str, label: str, slot, message: str) -> dict:
    slot.error(f"{md(label)} failed: {md(message)}", icon="⚠️")
    return {"status": "failed", "message": message}


def _done_text(label: str, run: Run, cached: bool = False) -> str:
    seconds = reused_text(run.reused_from, run.layer.label) if cached else f"{run.seconds:.2f} s"
    return f"{md(label)} · relative error {format_rel_error(run.rel_error)} · {seconds}"


# ---- whole-model runs: nothing outlives its owner ------------------------------------------------

MODEL_DIR_PREFIX = "obsviz-model-"
_MODEL_DIR_RE = re.compile(rf"^{MODEL_DIR_PREFIX}(\d{{1,10}})-(\d{{1,20}})-")
#: A folder whose name says no owner (made before owners were named) is removed at start-up
#: once it has been left this long.
LEGACY_DIR_AGE_S = 24 * 3600


class _FolderOwner:
    """Held in a session's state; the session's Model run folder is removed when it goes."""


def model_run_dir() -> str:
    """A new folder for this session's Model run (its pruned checkpoints, 90–175 MB for
    MiniLM), named for this process (``obsviz-model-<pid>-<start>-…``). It is removed when the
    session goes (Streamlit drops a session's state when the session ends: the owner kept in
    ``model_run_owner`` is then collected, and its finalizer removes the folder), when the next
    run of the session replaces it, when the server exits, and, for a server that was killed,
    at the next start-up (:func:`start_up`)."""
    _, pid, start = process_token().rsplit(":", 2)
    path = tempfile.mkdtemp(prefix=f"{MODEL_DIR_PREFIX}{pid}-{start}-")
    owner = _FolderOwner()
    weakref.finalize(owner, shutil.rmtree, path, ignore_errors=True)
    st.session_state["model_run_owner"] = owner
    return path


def remove_orphaned_dirs(root: str | Path | None = None) -> list[str]:
    """Remove the Model run folders under ``root`` (default the temporary folder) whose process
    is gone, and those without an owner in their name left for a day; returns their names."""
    import os

    root = Path(root or tempfile.gettempdir())
    host = process_token().rsplit(":", 2)[0]
    removed = []
    for entry in root.glob(f"{MODEL_DIR_PREFIX}*"):
        try:
            if entry.is_symlink() or not entry.is_dir():
                continue
            m = _MODEL_DIR_RE.match(entry.name)
            if m is not None:
                gone = token_alive(f"{host}:{m[1]}:{m[2]}") is False
            else:
                gone = entry.stat().st_mtime < time.time() - LEGACY_DIR_AGE_S
        except OSError:
            continue
        if gone and os.access(entry, os.W_OK):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def orphans_at_start_up() -> dict:
    """What a server cleans up when it starts: Model run folders, and ``running`` model runs and
    sensitivity scans of processes that are gone (killed mid-run:
    :meth:`obsviz.store.RunStore.stop_orphaned_model_runs` and ``stop_orphaned_scans`` mark them
    stopped, with what they finished). A store that cannot be written is left as it is."""
    done = {"folders": remove_orphaned_dirs(), "runs": [], "scans": []}
    db = run_store()
    if db is not None:
        with contextlib.suppress(Exception):
            done["runs"] = db.stop_orphaned_model_runs()
        with contextlib.suppress(Exception):
            done["scans"] = db.stop_orphaned_scans()
    return done


@st.cache_resource(show_spinner=False)
def start_up(store_path: str) -> dict:
    """:func:`orphans_at_start_up`, once per server process and run database."""
    return orphans_at_start_up()
