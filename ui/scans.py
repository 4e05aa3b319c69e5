"""What the Sensitivity page does besides drawing: the model run it scans (cached per setting),
keeping scans and checked plans in the run database, opening one layer's maps on the Compare page,
and checking plans from a scan (``obsviz.sensitivity``)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from obsviz import sensitivity as sens
from obsviz.calibrate import minilm_checkpoint_dir
from obsviz.errors import ArgumentError
from obsviz.layers import Layer
from obsviz.model import CALIBRATION_TEXT, HELD_OUT_TEXT, ModelRun, Plan, load_model

from ui import folders, runner, runs, state
from ui.layers import ActiveLayer, tensor_digest


def problem(title: str, detail: str | None = None) -> None:
    """A fixed message, with the engine's words shown as plain text (never markup)."""
    st.error(title, icon="⚠️")
    if detail:
        st.text(detail)


@st.cache_resource(max_entries=2, show_spinner="Loading the checkpoint and the texts…")
def model_run(model_dir: str, cal_tokens: int, eval_tokens: int, seq_len: int,
              device: str) -> ModelRun:
    """The dense model with the shipped calibration and held-out texts, once per setting (a
    scan and its plans never modify it)."""
    model, tokenizer = load_model(model_dir)
    return ModelRun(model, tokenizer, CALIBRATION_TEXT.read_text(encoding="utf-8"),
                    HELD_OUT_TEXT.read_text(encoding="utf-8"), seq_len=seq_len,
                    max_tokens=cal_tokens, max_eval_tokens=eval_tokens, device=device,
                    name="all-MiniLM-L6-v2" if model_dir == str(minilm_checkpoint_dir())
                    else Path(model_dir).name)


def folder(settings: dict) -> str | None:
    """The checkpoint folder of ``settings``: the shipped model, or a typed (or stored) path the
    server may open (``ui.folders``: under its model roots, with a config.json)."""
    if settings.get("source") == "minilm":
        found = minilm_checkpoint_dir()
        return None if found is None else str(found)
    return folders.checkpoint_folder(str(settings.get("path", "")))


def keep(result: dict, status: str = "running", error: str | None = None) -> None:
    """The scan (with its checks) into the run database; a failing store is said, not fatal."""
    db = runs.run_store()
    if db is None or not result["scan"].get("layers"):
        return
    try:
        result["id"] = db.record_scan(result["scan"], status=status, error=error,
                                      scan_id=result.get("id"))
    except Exception as err:
        result["store_error"] = f"{type(err).__name__}: {err}"[:300]


def keep_check(result: dict, check: dict, report: dict) -> None:
    """A checked plan into the scan (replacing an older check of the same k and spare) and its
    run into ``model_runs`` (the Model page opens it)."""
    db = runs.run_store()
    if db is not None and report.get("methods"):
        try:
            check["model_run"] = db.record_model_run(report, status="done")
        except Exception:
            pass
    checks = result["scan"].setdefault("checks", [])
    checks[:] = [c for c in checks if (c["k"], c.get("spare")) != (check["k"], check["spare"])]
    checks.append(check)
    keep(result, "stopped" if result["scan"].get("stopped") else "done")


def the_run(settings: dict) -> ModelRun | None:
    """The model run of ``settings`` (what a scan was made with), or ``None`` after saying why
    not."""
    where = folder(settings)
    if where is None:
        problem(folders.REFUSED)
        return None
    try:
        return model_run(where, int(settings["cal_tokens"]), int(settings["eval_tokens"]),
                         int(settings["seq_len"]), settings.get("device", state.device()))
    except ArgumentError as err:
        problem("The model cannot be used.", str(err))
    except Exception as err:
        problem("The checkpoint could not be loaded.", f"{type(err).__name__}: {err}"[:600])
    return None


def open_maps(data: dict, entry: dict, form: dict) -> None:
    """Prune the scan's layer ``entry`` as the scan did (its dense-model H), as a run of this
    session (and of the run store), and show its masks and error maps on the Compare page."""
    run = the_run(data.get("app") or form)
    if run is None:
        return
    try:
        lp, W, H, n = sens.layer_inputs(run, Plan.from_dict(data["plan"]), entry["name"])
    except ArgumentError as err:
        problem("That layer cannot be opened.", str(err))
        return
    name = data["model"]["name"]
    layer = Layer(entry["name"], W, H.float(), n, source=name)
    active = ActiveLayer(layer, tensor_digest(layer), f"{name} · {entry['name']}", "checkpoint")
    job = runs.Job(active, lp.geometry, lp.nnz, float(lp.options.get("damp", 0.01)),
                   run.device.type)
    runner.run_methods(job, [lp.method])
    st.switch_page("pages/compare.py")


def check_plans(result: dict, base: Plan, form: dict, goal: str) -> None:
    """Check plans from the scan of ``result`` by real runs, each kept as it ends: ``goal``
    ``"k"`` (the form's k, and the uniform plan beside it), ``"curve"`` (the form's list of k)
    or ``"within"`` (the fewest spared layers within the form's budget). Checks made already
    are not run again."""
    data = result["scan"]
    run = the_run(data.get("app") or form)
    if run is None:
        return
    spare = None if form["spare"] == "dense" else form["spare"]
    bar = st.progress(0.0, text="Running the plan…")

    def say(f: float, m: str) -> None:
        bar.progress(min(1.0, f), text=m)

    def on_check(c: dict, report: dict) -> None:
        keep_check(result, c, report)

    n = len(data["layers"])
    done = {(c["k"], c.get("spare")) for c in data.get("checks", [])}
    try:
        if goal == "within":
            best = sens.fewest_dense(run, data, base, float(form["within"]), spare, progress=say,
                                     on_check=on_check, known=data.get("checks", []))
            result["shown"] = best["k"]
            data["fewest"] = {k: v for k, v in best.items() if k != "checks"}
            keep(result, "done")
        else:
            ks = ([int(t) for t in str(form["curve"]).replace(",", " ").split() if t.isdigit()]
                  if goal == "curve" else [0, int(form["k"])])      # the uniform plan too
            todo = [k for k in dict.fromkeys(ks)
                    if 0 <= k <= n and (k, spare if k else None) not in done][:12]
            sens.curve(run, data, base, todo, spare, progress=say, on_check=on_check)
            if goal == "k":
                result["shown"] = int(form["k"])
    except ArgumentError as err:
        problem("The plan was refused.", str(err))
    except Exception as err:
        problem("The plan's run failed.", f"{type(err).__name__}: {err}"[:600])
    bar.empty()
