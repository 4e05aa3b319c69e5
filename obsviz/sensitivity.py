"""Which layers to spare: a layer-sensitivity scan, plans built from it, and checks of those plans
by real runs (no Streamlit).

A **scan** prunes each target layer of a model *alone* (every other layer dense, its H from the
dense model: the H ``ModelRun.prune(…, hessians="dense")`` prunes with) and measures what that one
layer does to the whole model on held-out text — the end metrics of
:meth:`obsviz.model.ModelRun.evaluate` — next to the layer's own relative error. Its **damage** is
one number per layer, 0 for the dense model:

- encoders: ``1 − cosine`` (cosine similarity of dense and pruned sentence embeddings);
- causal LMs: ``perplexity / dense perplexity − 1``.

Layers are independent, so they run one after another here or as Ray tasks
(``executor="ray"``).

A **plan from a scan** spares the k layers with the largest damage: leaves them dense, or gives
them a gentler geometry (``spare="4:8"``); the rest keep the base plan. It is stated as data —
one :class:`obsviz.model.Override` per spared layer, its exact name as the pattern — so
``Plan.describe()`` stores it with every run. Damage does not add up exactly, so every plan is
**checked** by a real sequential run (:func:`obsviz.model.run_methods`): :func:`curve` for a few
k, :func:`fewest_dense` for the fewest spared layers whose real run stays within a damage budget.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from obsviz.errors import ArgumentError
from obsviz.model import (
    CAUSAL,
    ENCODER,
    KINDS,
    GeometrySpec,
    LayerPlan,
    ModelRun,
    Override,
    Plan,
    _get_weight,
    _set_weight,
    resolve_plan,
    run_methods,
)
from obsviz.prune import prune

__all__ = ["LAYER_KINDS", "check_scan", "check_plan", "checks_report", "curve", "damage",
           "fewest_dense", "layer_choices", "layer_inputs", "layer_kind", "ranking", "scan",
           "scan_layer", "spare_plan"]

#: What a layer does in its block, from its name (the order the app's legend shows them in).
LAYER_KINDS = ("query", "key", "value", "query·key·value", "attention output", "MLP up",
               "MLP down", "other")
_KIND_RULES = (   # (kind, pattern on the name inside the block); the first match wins
    ("query·key·value", r"(^|\.)(c_attn|qkv|qkv_proj|query_key_value|Wqkv)$"),
    ("query", r"(^|\.)(query|q_proj|q_lin)$"),
    ("key", r"(^|\.)(key|k_proj|k_lin)$"),
    ("value", r"(^|\.)(value|v_proj|v_lin)$"),
    ("attention output", r"(attention\.output\.dense|attn\.c_proj|o_proj|out_proj|out_lin|"
                         r"attention\.dense|self_attention\.dense)$"),
    ("MLP up", r"(^|\.)(intermediate\.dense|c_fc|up_proj|gate_proj|fc1|lin1|w1|w3|"
               r"dense_h_to_4h)$"),
    ("MLP down", r"(^|\.)(output\.dense|mlp\.c_proj|down_proj|fc2|lin2|w2|dense_4h_to_h)$"),
)
#: The end metric each kind of model is judged by, and the name of damage.
END_METRIC = {ENCODER: "cosine", CAUSAL: "perplexity"}
DAMAGE = {ENCODER: "1 − cosine", CAUSAL: "perplexity ÷ dense − 1"}
#: Most layers a scan read back may hold, and characters per name.
_MAX_LAYERS = 100_000
_MAX_NAME = 1000

Progress = Callable[[float, str], None]


def layer_kind(local: str) -> str:
    """The kind of a Linear from its name inside its block (``attention.self.query`` ->
    ``"query"``, ``mlp.c_fc`` -> ``"MLP up"``), ``"other"`` when no rule knows it."""
    for kind, pattern in _KIND_RULES:
        if re.search(pattern, local):
            return kind
    return "other"


def damage(kind: str, metrics: dict, dense: dict) -> float:
    """The damage of end ``metrics`` against the ``dense`` ones (see the module docstring)."""
    if kind == ENCODER:
        return 1.0 - float(metrics["cosine"])
    return float(metrics["perplexity"]) / float(dense["perplexity"]) - 1.0


def _dense_metrics(run: ModelRun) -> dict:
    if run.kind == CAUSAL:
        return {"perplexity": run.evaluate(run.dense)["metrics"]["dense_perplexity"]}
    return {"cosine": 1.0, "last_hidden_rel_error": 0.0}


# ---- the scan ---------------------------------------------------------------------------------


def scan_layer(run: ModelRun, work: torch.nn.Module, lp: LayerPlan, H: torch.Tensor,
               nsamples: int, dense: dict) -> dict:
    """One scan entry: ``lp`` pruned with ``H`` (its dense-model H), written into ``work`` (a
    copy of the dense model), the model evaluated, the dense weight put back."""
    mod = dict(work.named_modules())[lp.name]
    W = _get_weight(mod)
    res = prune(W, H, lp.geometry, lp.nnz, method=lp.method, device=run.device, **lp.options)
    t0 = time.perf_counter()
    _set_weight(mod, res.weight.to(W.dtype))
    try:
        ev = run.evaluate(work)
    finally:
        _set_weight(mod, W)
    return {"name": lp.name, "block": lp.block, "local": lp.local, "kind": layer_kind(lp.local),
            "shape": list(lp.shape), "geometry": lp.geometry.name or lp.geometry.describe(),
            "nnz": lp.nnz, "method": lp.method, "rel_error": float(res.rel_error),
            "sparsity": 1.0 - float(res.mask.float().mean()), "seconds": float(res.seconds),
            "eval_seconds": time.perf_counter() - t0, "nsamples": int(nsamples),
            "metrics": ev["metrics"], "drift": ev["drift"],
            "damage": damage(run.kind, ev["metrics"], dense)}


def scan(run: ModelRun, plan: Plan, *, executor: str = "local", address: str | None = None,
         progress: Progress | None = None, stop: Callable[[], bool] | None = None,
         on_layer: Callable[[dict, dict], None] | None = None, into: dict | None = None,
         max_retries: int = 3, max_in_flight: int | None = None,
         layer_fn: Callable = scan_layer) -> dict:
    """Prune every target layer of ``plan`` alone and measure the model; returns the scan
    (JSON-ready): ``model``, ``plan``, ``dense`` (end metrics), ``layers`` (one entry per layer
    in the order they finished: name, block, kind, shape, geometry, nnz, method, ``rel_error``,
    sparsity, seconds, end ``metrics``, ``drift``, ``damage``), ``stopped``, ``seconds``.

    ``executor="ray"``: one Ray task per layer (``address`` of a cluster, else Ray locally; one
    GPU per task when the run is on CUDA; a task whose worker dies is retried ``max_retries``
    times). ``on_layer(entry, scan)`` as each layer finishes (to keep the scan in the run store);
    ``stop()`` ends the scan after the layers running now (``stopped=True``); ``into``: a dict
    filled in place (what a caller keeps when the scan is interrupted). A layer whose task
    fails on Ray is listed in ``failed`` (name and message); the others go on."""
    from obsviz.sweep import EXECUTORS

    if executor not in EXECUTORS:
        raise ArgumentError("executor", f"executor={executor!r} is unknown; valid: "
                            f"{', '.join(EXECUTORS)}")
    if executor == "local" and address is not None:
        raise ArgumentError("address", "address= is for executor='ray'")
    layers = resolve_plan(run.dense, plan)
    run.check_memory(plan, layers)
    say = progress or (lambda f, m: None)
    stop = stop or (lambda: False)
    out = into if into is not None else {}
    t0 = time.perf_counter()
    out.update({"model": run.describe(), "plan": plan.describe(), "executor": executor,
                "dense": _dense_metrics(run), "layers": [], "stopped": False, "seconds": 0.0,
                "total": len(layers), "damage": DAMAGE[run.kind], "failed": []})

    def done(entry: dict) -> None:
        out["layers"].append(entry)
        out["seconds"] = time.perf_counter() - t0
        say(len(out["layers"]) / len(layers),
            f"{entry['name']}: damage {entry['damage']:.4g}, own error {entry['rel_error']:.4f}")
        if on_layer is not None:
            on_layer(entry, out)

    say(0.0, f"Hessians from the dense model ({len(run.calibration)} batches)")
    if executor == "local":
        work = copy.deepcopy(run.dense)
        for group, H, n in run.dense_hessians(layers, stop):
            for lp in group:
                if stop():
                    break
                done(scan_layer(run, work, lp, H, n, out["dense"]))
        stopped = stop() and len(out["layers"]) < len(layers)
    else:
        stopped = _ray_scan(run, layers, out, done, stop, address, max_retries,
                            max_in_flight, layer_fn)
    out["stopped"] = bool(stopped)
    out["seconds"] = time.perf_counter() - t0
    return out


def layer_inputs(run: ModelRun, plan: Plan, name: str) -> tuple[LayerPlan, torch.Tensor,
                                                                 torch.Tensor, int]:
    """``(layer plan, W, H, nsamples)`` of the target layer ``name``: what the scan pruned it
    with (W float32 as obsviz sees it, H float64 from the dense model). One pass of the
    calibration text up to that layer's block."""
    lp = next((lp for lp in resolve_plan(run.dense, plan) if lp.name == name), None)
    if lp is None:
        raise ArgumentError("layer", f"{name[:_MAX_NAME]!r} is not a target layer of this plan")
    for _, H, n in run.dense_hessians([lp]):
        W = _get_weight(dict(run.dense.named_modules())[name])
        return lp, W, H, n
    raise ArgumentError("layer", "the calibration text never reached that layer")


def ranking(scan_: dict) -> list[dict]:
    """The scan's entries by damage, largest first (ties: larger own error first, then model
    order)."""
    order = {e["name"]: i for i, e in enumerate(sorted(scan_["layers"],
                                                       key=lambda e: (e["block"], e["name"])))}
    return sorted(scan_["layers"], key=lambda e: (-e["damage"], -e["rel_error"],
                                                  order[e["name"]]))


def _scan_task(layer_fn: Callable):
    import ray

    @ray.remote
    def scan_task(run: ModelRun, lp: LayerPlan, H: torch.Tensor, n: int, dense: dict,
                  device: str) -> dict:
        run.to(device)
        work = copy.deepcopy(run.dense)
        return {"status": "done", "entry": layer_fn(run, work, lp, H.to(run.device), n, dense)}

    return scan_task


def _ray_scan(run: ModelRun, layers: list[LayerPlan], out: dict, done, stop, address,
              max_retries: int, max_in_flight: int | None, layer_fn: Callable) -> bool:
    """The scan's layers as Ray tasks (``obsviz.sweep.ray_each``): the run in the object store
    once (its dense held-out outputs computed first), each group's H once."""
    from obsviz.sweep import _ray, _ray_device, ray_each, ray_slots

    ray = _ray(address)
    device = run.device.type if run.device.type == "cuda" else _ray_device(ray, None)
    gpus = 1 if device == "cuda" else 0
    task = _scan_task(layer_fn).options(num_cpus=1, num_gpus=gpus, max_retries=max_retries,
                                        retry_exceptions=False)
    run._dense_outputs()
    run_ref = ray.put(run)
    items = []
    for group, H, n in run.dense_hessians(layers, stop):
        H_ref = ray.put(H.cpu())
        items += [(lp, H_ref, n) for lp in group]

    def on_out(item, got: dict) -> None:
        if got["status"] == "done":
            done(got["entry"])
        else:
            out["failed"].append({"name": item[0].name, "error": str(got["error"])[:2000]})

    stopped = ray_each(ray, task, items,
                       lambda item: (run_ref, item[0], item[1], item[2], out["dense"], device),
                       on_out, stop, max_in_flight or ray_slots(ray, gpus))
    return stopped or len(items) < len(layers)


# ---- plans from a scan -----------------------------------------------------------------------


def _exact(name: str) -> str:
    """An ``fnmatch`` pattern matching ``name`` only (``*``, ``?`` and ``[`` escaped)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def spare_plan(base: Plan, names: Sequence[str], spare: GeometrySpec | None = None,
               nnz: int | None = None) -> Plan:
    """``base`` with the layers ``names`` spared: left dense (``spare=None``) or pruned with the
    gentler geometry ``spare`` (a preset such as ``"4:8"``, with ``nnz`` or its own budget).
    One override per layer, its exact name as the pattern, after ``base``'s own."""
    extra = tuple(Override(_exact(n), skip=True) if spare is None
                  else Override(_exact(n), geometry=spare, nnz=nnz) for n in names)
    return replace(base, overrides=(*base.overrides, *extra))


def layer_choices(run: ModelRun, plan: Plan, names: Sequence[str]) -> dict[str, str]:
    """What ``plan`` does to each layer of ``names``: its geometry (``"2:4"``, ``"4:8"``, …) or
    ``"dense"``."""
    try:
        resolved = {lp.name: lp for lp in resolve_plan(run.dense, plan)}
    except ArgumentError as err:
        if err.argument != "include":    # "selects no layer": every layer is dense
            raise
        resolved = {}
    return {n: (resolved[n].geometry.name or resolved[n].geometry.describe()) if n in resolved
            else "dense" for n in names}


def _weights(entries: Sequence[dict]) -> int:
    return sum(int(e["shape"][0]) * int(e["shape"][1]) for e in entries)


def check_plan(run: ModelRun, scan_: dict, base: Plan, k: int, spare: GeometrySpec | None = None,
               *, nnz: int | None = None, progress: Progress | None = None,
               stop: Callable[[], bool] | None = None, report: dict | None = None) -> dict:
    """The plan sparing the ``k`` most damaging layers of ``scan_``, checked by a real sequential
    run of ``base.method``: ``k``, ``spared`` (names), ``spare``, ``plan`` (``describe()``),
    ``choices`` (layer -> geometry or ``"dense"``), end ``metrics``, ``damage``,
    ``pruned_fraction`` (zeroed weights ÷ the weights of the scanned layers), ``seconds``,
    ``stopped``, ``run`` (the run's method entry: its layers, metrics and drift, as a report of
    :func:`~obsviz.model.run_methods` holds it). ``report``: a dict filled with the run's report
    (to store as a model run). Sparing every layer leaves the dense model, measured as it is."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(scan_["layers"]):
        raise ArgumentError("k", f"k={k!r} must be an integer from 0 to "
                            f"{len(scan_['layers'])} (the scanned layers)")
    names = [e["name"] for e in ranking(scan_)[:k]]
    plan = spare_plan(base, names, spare, nnz)
    all_names = [e["name"] for e in scan_["layers"]]
    choices = layer_choices(run, plan, all_names)
    total = _weights(scan_["layers"])
    t0 = time.perf_counter()
    out = {"k": k, "spared": names,
           "spare": None if k == 0 else spare if isinstance(spare, str | None) else "custom",
           "plan": plan.describe(), "choices": choices}
    if all(c == "dense" for c in choices.values()):
        ev = run.evaluate(run.dense)
        entry = {"method": plan.method, "seconds": 0.0, "sparsity": 0.0, "layers": [], **ev}
    else:
        rep = run_methods(run, plan, [plan.method], hessians="sequential", progress=progress,
                          stop=stop, into=report)
        entry = rep["methods"][plan.method]
    stopped = bool(entry.get("stopped"))
    metrics = entry.get("metrics", {})
    pruned = sum(lr["sparsity"] * lr["shape"][0] * lr["shape"][1] for lr in entry["layers"])
    out["run"] = {k: entry[k] for k in ("method", "seconds", "sparsity", "layers", "metrics",
                                        "drift") if k in entry}
    out.update({"metrics": metrics, "stopped": stopped,
                "damage": None if stopped else damage(run.kind, metrics, scan_["dense"]),
                "pruned_fraction": pruned / total if total else 0.0,
                "seconds": time.perf_counter() - t0})
    return out


def curve(run: ModelRun, scan_: dict, base: Plan, ks: Sequence[int],
          spare: GeometrySpec | None = None, *, progress: Progress | None = None,
          stop: Callable[[], bool] | None = None,
          on_check: Callable[[dict, dict], None] | None = None) -> list[dict]:
    """:func:`check_plan` for each k of ``ks`` (end metric vs fraction of weights pruned, each
    point a real run). ``on_check(check, report)`` after each."""
    ks = list(dict.fromkeys(ks))
    say = progress or (lambda f, m: None)
    out = []
    for i, k in enumerate(ks):
        if stop is not None and stop():
            break
        report: dict = {}
        c = check_plan(run, scan_, base, k, spare, progress=lambda f, m, i=i, k=k: say(
            (i + f) / len(ks), f"{k} spared: {m}"), stop=stop, report=report)
        out.append(c)
        if on_check is not None:
            on_check(c, report)
        if c["stopped"]:
            break
    return out


def fewest_dense(run: ModelRun, scan_: dict, base: Plan, within: float,
                 spare: GeometrySpec | None = None, *, progress: Progress | None = None,
                 stop: Callable[[], bool] | None = None,
                 on_check: Callable[[dict, dict], None] | None = None,
                 known: Sequence[dict] = ()) -> dict:
    """The fewest most-damaging layers to spare so that a real sequential run stays within
    ``within`` of dense (its damage at most ``within``), found by bisection on k over real runs:
    k = 0 (the uniform plan) first; sparing every layer is the dense model (damage 0, not run).
    Returns ``within``, ``k`` (the answer), ``checks`` (every real run, in the order made) and
    ``found`` (False when stopped first). The search assumes more spared layers never hurt; the
    checks show where that held (k − 1 is among them, failing, unless k = 0). ``known``: checks
    made already (a curve's, the scan's ``checks``): a k checked there with the same spare is
    not run again (it is listed in ``checks`` all the same)."""
    if isinstance(within, bool) or not isinstance(within, int | float) or not (
            math.isfinite(within) and within >= 0):
        raise ArgumentError("within", f"within={within!r} must be a finite number ≥ 0 (damage: "
                            f"{DAMAGE[run.kind]})")
    n = len(scan_["layers"])
    checks: list[dict] = []
    say = progress or (lambda f, m: None)

    spare_key = spare if isinstance(spare, str | None) else "custom"
    made = {c["k"]: c for c in known if c.get("damage") is not None
            and c.get("spare") == (None if c["k"] == 0 else spare_key)}

    def ok(k: int) -> bool | None:
        if k in made:
            checks.append(made[k])
            return made[k]["damage"] <= within
        report: dict = {}
        c = check_plan(run, scan_, base, k, spare, stop=stop, report=report,
                       progress=lambda f, m: say(min(0.99, len(checks) / max(1, math.log2(
                           n + 1) + 1)), f"{k} spared: {m}"))
        checks.append(c)
        if on_check is not None:
            on_check(c, report)
        return None if c["stopped"] else c["damage"] <= within

    lo, hi = 0, n          # invariant: lo fails (or is unchecked at 0), hi passes
    first = ok(0)
    if first is None:
        return {"within": within, "k": None, "checks": checks, "found": False}
    if first:
        return {"within": within, "k": 0, "checks": checks, "found": True}
    while hi - lo > 1:
        if stop is not None and stop():
            return {"within": within, "k": None, "checks": checks, "found": False}
        mid = (lo + hi) // 2
        got = ok(mid)
        if got is None:
            return {"within": within, "k": None, "checks": checks, "found": False}
        lo, hi = (lo, mid) if got else (mid, hi)
    return {"within": within, "k": hi, "checks": checks, "found": True}


def check_label(check: dict) -> str:
    """``"sparsegpt · uniform"``, ``"sparsegpt · 4 spared dense"``, ``"… 4 spared 4:8"``."""
    method = check.get("run", {}).get("method", "")
    if check["k"] == 0:
        return f"{method} · uniform"
    return f"{method} · {check['k']} spared {check.get('spare') or 'dense'}"


def checks_report(scan_: dict, checks: Sequence[dict]) -> dict:
    """Checked plans as one report of :func:`~obsviz.model.run_methods`'s shape (one entry per
    plan, named by :func:`check_label`), checked by ``check_report``'s rules: what the Model
    page's views draw."""
    from obsviz.model import check_report

    methods = {check_label(c): c["run"] for c in checks if "run" in c and "metrics" in c["run"]}
    report = {"model": scan_["model"], "plan": scan_["plan"], "hessians": "sequential",
              "dense": scan_["dense"], "methods": methods}
    check_report({**report, "methods": {}})    # the shared fields; each entry below
    for entry in methods.values():
        check_report({**report, "methods": {entry["method"]: entry}})
    return report


# ---- a scan read back ------------------------------------------------------------------------


def _bad(where: str, what: str) -> ArgumentError:
    return ArgumentError("scan", f"scan{where}: {what}")


def _number(v: object) -> bool:
    return isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool)
                                    and abs(v) <= 2**1023)


def check_scan(data: object) -> dict:
    """A scan read back (the run database, a JSON file: hostile) checked against what the views
    read: the model (name, kind, blocks, block list), ``dense`` metrics, and per layer its name,
    block, kind, shape, geometry, nnz, ``rel_error``, ``damage`` and end metrics; ``checks``
    (optional) each with ``k``, ``spared`` and ``pruned_fraction``. Returns ``data``; raises
    ``ArgumentError("scan", …)`` naming the first bad field. One pass."""
    if not isinstance(data, dict):
        raise _bad("", "must be a JSON object")
    info = data.get("model")
    if not isinstance(info, dict) or info.get("kind") not in KINDS or not isinstance(
            info.get("name"), str) or len(info["name"]) > _MAX_NAME:
        raise _bad("['model']", "must name the model and its kind (encoder or causal)")
    if not isinstance(info.get("block_list", ""), str):
        raise _bad("['model']['block_list']", "must be a string")
    dense = data.get("dense")
    if not isinstance(dense, dict) or not all(_number(v) for v in dense.values()):
        raise _bad("['dense']", "must map metric names to numbers")
    if info["kind"] == CAUSAL and "perplexity" not in dense:
        raise _bad("['dense']", "a causal LM's scan needs the dense perplexity")
    if not isinstance(data.get("plan"), dict):
        raise _bad("['plan']", "must be a JSON object")
    layers = data.get("layers")
    if not isinstance(layers, list) or len(layers) > _MAX_LAYERS:
        raise _bad("['layers']", f"must be a list of at most {_MAX_LAYERS} entries")
    need = END_METRIC[info["kind"]]
    names = set()
    for i, e in enumerate(layers):
        at = f"['layers'][{i}]"
        if not isinstance(e, dict):
            raise _bad(at, "must be a JSON object")
        for key in ("name", "geometry", "kind", "method"):
            if not isinstance(e.get(key), str) or len(e[key]) > _MAX_NAME:
                raise _bad(f"{at}[{key!r}]", f"must be a string of at most {_MAX_NAME} "
                           "characters")
        for key in ("block", "nnz"):
            v = e.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise _bad(f"{at}[{key!r}]", "must be an integer ≥ 0")
        for key in ("rel_error", "damage", "sparsity"):
            if not _number(e.get(key)):
                raise _bad(f"{at}[{key!r}]", "must be a number")
        shape = e.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 2**31
                for v in shape)):
            raise _bad(f"{at}['shape']", "must be [M, K]")
        m = e.get("metrics")
        if not isinstance(m, dict) or not _number(m.get(need)):
            raise _bad(f"{at}['metrics']", f"must hold {need!r}")
        names.add(e["name"])
    checks = data.get("checks", [])
    if not isinstance(checks, list) or len(checks) > 10_000:
        raise _bad("['checks']", "must be a list")
    for i, c in enumerate(checks):
        at = f"['checks'][{i}]"
        if not isinstance(c, dict):
            raise _bad(at, "must be a JSON object")
        k = c.get("k")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(layers):
            raise _bad(f"{at}['k']", "must be an integer from 0 to the number of layers")
        spared = c.get("spared")
        if not isinstance(spared, list) or not all(isinstance(s, str) and s in names
                                                    for s in spared):
            raise _bad(f"{at}['spared']", "must list scanned layers")
        if not _number(c.get("pruned_fraction")):
            raise _bad(f"{at}['pruned_fraction']", "must be a number")
        if c.get("damage") is not None and not _number(c["damage"]):
            raise _bad(f"{at}['damage']", "must be a number")
        if not isinstance(c.get("metrics", {}), dict):
            raise _bad(f"{at}['metrics']", "must be a JSON object")
    return data
