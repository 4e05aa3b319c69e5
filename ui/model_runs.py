"""The Model page's runs, without drawing: keeping this session's run in the run database as it
goes, one stored run on one line, what a run that did not finish kept, the form refilled from a
stored run's plan, and the rows of the end-metrics table.

``model_result`` (``ui.state``): ``report``, ``dir`` (this session's run folder: its
checkpoints), ``own_id`` (that run's row), ``stored_id`` (the row of the report shown),
``methods`` (asked for), ``running``, ``previous`` (the result shown before this run began, kept
while this one has no finished method)."""

from __future__ import annotations

from obsviz.geometry import PRESETS
from obsviz.methods import METHODS, OPTIONS
from obsviz.metrics import format_rel_error
from obsviz.model import HESSIANS, finished_methods, kept_summary

from ui import runs
from ui.forms import preset_budget

STATUS = {"running": "unfinished", "done": "done", "stopped": "stopped", "failed": "failed"}


def keep(result: dict, status: str = "running", error: str | None = None) -> None:
    """Write this session's run (its finished methods, and the layers finished of the one
    under way) to the run database: a new row the first time, the same row updated after. A
    store that fails is said, never fatal: the result stays in the session."""
    db = runs.run_store()
    if db is None or not (result.get("report") or {}).get("methods"):
        return
    try:
        result["own_id"] = result["stored_id"] = db.record_model_run(
            result["report"], methods=result["methods"], status=status, error=error,
            run_id=result.get("own_id"))
    except Exception as err:  # a full disk must not lose the result in memory
        result["store_error"] = f"{type(err).__name__}: {err}"[:300]


def when(iso: str) -> str:
    """A stored UTC time as ``2026-11-29 22:31 UTC``."""
    return f"{str(iso)[:16].replace('T', ' ')} UTC"


def stored_label(row) -> str:
    """One stored model run on one line (plain text: a selectbox shows it as it is)."""
    methods = ", ".join(row.finished) or "no method finished"
    status = "" if row.status == "done" else f" · {STATUS.get(row.status, row.status)}"
    return (f"#{row.id} · {row.name} · {row.plan} · {methods} · {when(row.created)}"
            f"{status}")[:400]


def new_result(old: dict | None, out_dir: str, methods: list[str]) -> dict:
    """This session's next run; the result shown until now stays as its ``previous`` (shown
    while the new run has no finished method), unless it has none either."""
    keep_old = old if old and finished_methods(old.get("report") or {}) else (
        (old or {}).get("previous"))
    if keep_old is not None:
        keep_old = {k: v for k, v in keep_old.items() if k != "previous"}
    return {"dir": out_dir, "report": None, "running": True, "methods": methods,
            "own_id": None, "stored_id": None, "previous": keep_old}


def opened_result(stored, old: dict | None) -> dict:
    """A run opened from the run database (``RunStore.model_run``); this session's own run
    folder stays known (its checkpoints are downloadable when it is shown again)."""
    old = old or {}
    return {"report": stored.report, "stored_id": stored.id, "dir": old.get("dir"),
            "own_id": old.get("own_id"), "methods": stored.methods, "running": False,
            "created": stored.created, "status": stored.status}


def unfinished(result: dict) -> str | None:
    """What a run that did not finish (stopped, failed, or still marked running in the store)
    kept, in one sentence; ``None`` for a run that finished."""
    report = result.get("report") or {}
    stopped = result.get("status") in ("stopped", "failed", "running") or report.get("stopped")
    if not stopped and len(finished_methods(report)) == len(report.get("methods", {})):
        return None
    text = kept_summary(report, result.get("methods") or (),
                        "failed" if result.get("status") == "failed" else "stopped")
    first = text.split(" ", 1)[0]
    return (text if first in METHODS else text[:1].upper() + text[1:]) + "."   # names as they are


def form_from_plan(form: dict, report: dict, methods: list[str]) -> list[str]:
    """Set the Model page's form to the plan a stored run was made with (its geometry, nnz,
    include/exclude, Hessians, damping and method options, the methods asked, the calibration
    and held-out sizes). Returns what the form cannot show (a plan made elsewhere), in words."""
    plan, info = report.get("plan", {}), report.get("model", {})
    missed = []
    geo = plan.get("geometry")
    if isinstance(geo, str) and geo in PRESETS:
        form.update(geo_source="preset", preset=geo)
    else:
        missed.append(f"geometry {geo}")
    if isinstance(plan.get("nnz"), int):
        form["nnz"] = plan["nnz"]
    elif isinstance(geo, str) and geo in PRESETS:
        preset_budget(form)("preset")   # the preset's own nnz
    form["include"] = ", ".join(plan.get("include") or ["*"])
    form["exclude"] = ", ".join(plan.get("exclude") or [])
    if report.get("hessians") in HESSIANS:
        form["hessians"] = report["hessians"]
    options = dict(plan.get("options") or {})
    if "damp" in options:
        form["damp"] = float(options.pop("damp"))
    for name, value in options.items():
        if name in OPTIONS:
            form[name] = value
    form["methods"] = [m for m in METHODS if m in methods]
    if plan.get("overrides"):
        missed.append(f"{len(plan['overrides'])} per-layer override(s)")
    cal, ev = info.get("calibration", {}), info.get("evaluation", {})
    for field, value, low, high in (("cal_tokens", cal.get("tokens"), 64, 200_000),
                                    ("eval_tokens", ev.get("tokens"), 64, 200_000),
                                    ("seq_len", cal.get("seq_len"), 16, 2048)):
        if isinstance(value, int) and not isinstance(value, bool):
            form[field] = min(max(value, low), high)
    return missed


def metric_rows(report: dict) -> list[dict]:
    """The end-metrics table: the dense model, then each finished method with its sparsity, its
    seconds (all of it, and the pruning alone beside the estimate made before the run) and its
    time against SparseGPT's."""
    info = report["model"]
    entries = {m: report["methods"][m] for m in finished_methods(report)}
    ref = entries.get("sparsegpt")
    estimate = report.get("estimate") or {}

    def timing(m: str, e: dict) -> dict:
        est = estimate.get(m)
        return {"sparsity": f"{100 * e['sparsity']:.1f} %", "seconds": f"{e['seconds']:.1f}",
                "pruning s": f"{sum(lr['seconds'] for lr in e['layers']):.1f}",
                "pruning s estimated": f"{est:.1f}" if isinstance(est, int | float) else "–",
                "time ÷ SparseGPT": f"{e['seconds'] / ref['seconds']:.2f}"
                if ref and ref["seconds"] > 0 else "–"}

    dash = {"sparsity": "0.0 %", "seconds": "–", "pruning s": "–", "pruning s estimated": "–",
            "time ÷ SparseGPT": "–"}
    if info["kind"] == "encoder":
        rows = [{"model": "dense", "cosine similarity": "1", "last hidden state error":
                 format_rel_error(0.0), **dash}]
        rows += [{"model": m, "cosine similarity": f"{e['metrics']['cosine']:.4f}",
                  "last hidden state error":
                      format_rel_error(e["metrics"]["last_hidden_rel_error"]), **timing(m, e)}
                 for m, e in entries.items()]
    else:
        rows = [{"model": "dense", "perplexity": f"{report['dense']['perplexity']:.3f}", **dash}]
        rows += [{"model": m, "perplexity": f"{e['metrics']['perplexity']:.3f}",
                  **timing(m, e)} for m, e in entries.items()]
    return rows


def layer_rows(report: dict) -> list[dict]:
    """Every layer of every method, finished or not (a stopped method's layers are kept)."""
    return [{"method": m, "layer": lr["name"], "shape": f"{lr['shape'][0]} × {lr['shape'][1]}",
             "geometry": lr["geometry"], "nnz": lr["nnz"],
             "relative error": format_rel_error(lr["rel_error"]),
             "seconds": round(lr["seconds"], 3)}
            for m, e in report["methods"].items() for lr in e["layers"]]
