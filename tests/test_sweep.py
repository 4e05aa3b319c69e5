"""Sweeps: the spec, the grid, resume and stop on the local executor; the same grid on a real
local Ray cluster (num_cpus=2, a 100 MB object store), a trial that raises, a killed worker."""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from obsviz import ArgumentError, Geometry, load_sample_layer, prune, save_layers
from obsviz.layers import Layer
from obsviz.store import RunStore, layer_hash
from obsviz.sweep import (
    SpecError,
    SweepProgress,
    load_spec,
    parse_spec,
    plan,
    ray_runtime_env,
    run_trial,
    sweep,
)

EXAMPLE = """
[[layers]]
file = "layers.safetensors"               # or: sample = "layer0.query"
names = ["encoder.layer.3.attention.self.query"]   # omitted: every layer in the file
[grid]
presets = ["2:4", "coupled-2:4"]
methods = ["magnitude", "sparsegpt", "interleaved"]
damp = [0.01]
"""
QUERY = "encoder.layer.3.attention.self.query"


def crop(name: str, sample: str, m: int, k: int) -> Layer:
    """A corner of a real MiniLM layer: W[:m, :k] with its Hessian's block H[:k, :k] (a
    principal block of a PSD matrix is PSD, and it is the Hessian of the cropped layer)."""
    lay = load_sample_layer(sample)
    return Layer(name, lay.weight[:m, :k].clone(), lay.hessian[:k, :k].clone(), lay.nsamples,
                 f"{lay.source}, rows :{m}, columns :{k}")


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("spec")
    save_layers(d / "layers.safetensors", [crop(QUERY, "layer0.query", 32, 64),
                                           crop("key", "layer0.key", 32, 64),
                                           crop("odd", "layer5.value", 8, 24)])
    (d / "example.toml").write_text(EXAMPLE)
    return d


def _sql(path, query):
    con = sqlite3.connect(path)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


# ---- the issue's example, as written ----------------------------------------------------------


def test_issue_example_runs_as_written(spec_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the file path is relative to the spec's folder, not the cwd
    events: list[SweepProgress] = []
    rep = sweep(spec_dir / "example.toml", store=tmp_path / "runs.sqlite",
                progress=lambda s: events.append(s.finished))
    assert (rep.total, rep.done, rep.failed, rep.skipped, rep.name) == (6, 6, 0, 0, "example")
    assert events == [0, 1, 2, 3, 4, 5, 6]
    rows = _sql(tmp_path / "runs.sqlite", "SELECT layer, geometry, nnz, method, rel_error, "
                "seconds, status FROM runs ORDER BY id")
    assert [(r[1], r[3]) for r in rows] == [(g, m) for g in ("2:4", "coupled-2:4") for m in
                                            ("magnitude", "sparsegpt", "interleaved")]
    assert {(r[0], r[2], r[6]) for r in rows} == {(QUERY, 2, "done")}
    # each stored result is exactly what prune() gives for the same inputs
    lay = crop(QUERY, "layer0.query", 32, 64)
    store = RunStore(tmp_path / "runs.sqlite")
    for run in store.runs():
        geom = Geometry.preset(run.geometry, lay.shape)
        ref = prune(lay.weight, lay.hessian, geom, 2, method=run.method, damp=0.01, device="cpu")
        assert run.rel_error == pytest.approx(ref.rel_error, rel=1e-9, abs=1e-12)
        t = store.tensors(run.id)
        assert torch.equal(t["mask"], ref.mask)
        torch.testing.assert_close(t["weight"], ref.weight)
        assert run.sparsity == pytest.approx(0.5) and run.sweep == "example"
        assert run.layer_hash == layer_hash(lay.weight, lay.hessian)


def test_resume_skips_done_and_reruns_the_rest(spec_dir, tmp_path):
    db = tmp_path / "runs.sqlite"
    first = sweep(spec_dir / "example.toml", store=db)
    again = sweep(spec_dir / "example.toml", store=db)
    assert (again.done, again.failed, again.skipped) == (0, 0, 6)
    assert again.run_ids == first.run_ids
    store = RunStore(db)
    store.delete(first.run_ids[2])
    third = sweep(spec_dir / "example.toml", store=db)
    assert (third.done, third.skipped) == (1, 5) and store.count() == 6


def test_a_sweep_lists_trials_another_sweep_already_ran(spec_dir, tmp_path):
    db = tmp_path / "runs.sqlite"
    first = sweep(spec_dir / "example.toml", store=db)
    wider = parse_spec({"name": "wider", "layers": [{"file": "layers.safetensors",
                                                       "names": [QUERY]}],
                        "grid": {"presets": ["2:4", "4:8"], "methods": ["magnitude"]}},
                       base=spec_dir)
    rep = sweep(wider, store=db)
    assert (rep.done, rep.skipped) == (1, 1)
    store = RunStore(db)
    shown = store.runs(sweep="wider")
    assert {(r.geometry, r.method) for r in shown} == {("2:4", "magnitude"),
                                                        ("4:8", "magnitude")}
    assert first.run_ids[0] in [r.id for r in shown] and len(store.runs(sweep="example")) == 6


def test_stop_leaves_the_rest_for_resume(spec_dir, tmp_path):
    db = tmp_path / "runs.sqlite"
    seen: list[int] = []
    rep = sweep(spec_dir / "example.toml", store=db, progress=lambda s: seen.append(s.finished),
                stop=lambda: len(seen) > 2)
    assert rep.stopped and rep.done == 2 and rep.left == 4 and RunStore(db).count() == 2
    rest = sweep(spec_dir / "example.toml", store=db)
    assert (rest.done, rest.skipped, rest.stopped) == (4, 2, False)


def test_grid_free_form_nm_nnz_and_a_geometry_that_does_not_fit(spec_dir, tmp_path):
    spec = {
        "name": "mixed",
        "layers": [{"file": "layers.safetensors", "names": ["odd", "key"]}],
        "grid": {"presets": ["1:4", "coupled-2:4", "1:3"],
                 "geometries": [{"block": [1, 2], "scope": [1, 4], "name": "pairs"}],
                 "nnz": [1, 2], "methods": ["wanda", {"method": "split", "n_splits": 2}],
                 "damp": [0.01, 0.1]},
    }
    rep = sweep(parse_spec(spec, base=spec_dir), store=tmp_path / "r.sqlite")
    assert rep.total == 2 * 4 * 2 * 2 * 2
    store = RunStore(tmp_path / "r.sqlite")
    failed = store.runs(status="failed")
    # coupled-2:4 needs K divisible by 16: 'odd' has K = 24 → those trials fail, named, the rest run
    # 1:3 on K = 64 and nnz = 2 with a scope of 2 blocks (coupled-2:4 has 4, 1:3 has 3) are fine
    assert rep.failed == len(failed) == 2 * 2 * 2 + 2 * 2 * 2
    # each name says what was run: 1:3 at nnz 2 is 2:3, coupled-2:4 at nnz 1 says so
    assert {(r.layer, r.geometry) for r in failed} == {
        ("odd", "coupled-2:4"), ("odd", "coupled-2:4 at nnz = 1"), ("key", "1:3"),
        ("key", "2:3")}
    assert all("divisible by 16" in r.error for r in failed if r.layer == "odd")
    assert all("must divide the row length" in r.error for r in failed if r.layer == "key")
    done = store.runs(status="done")
    assert len(done) == rep.done == rep.total - rep.failed
    odd = crop("odd", "layer5.value", 8, 24)
    for r in store.runs(layer="odd", status="done", method="split"):
        geom = r.geometry_obj()
        ref = prune(odd.weight, odd.hessian, geom, r.nnz, method="split", damp=r.damp,
                    n_splits=2, device="cpu")
        assert r.rel_error == pytest.approx(ref.rel_error, rel=1e-9, abs=1e-12)
        assert r.options["n_splits"] == 2
        assert r.sparsity == pytest.approx(geom.sparsity(r.nnz))
    assert {r.geometry for r in done} >= {"1:4", "2:4", "view W, block (1, 2), scope (1, 4)"}
    assert {(r.geometry, r.nnz) for r in done if ":" in r.geometry and "," not in r.geometry
            } >= {("1:4", 1), ("2:4", 2), ("1:3", 1), ("2:3", 2)}


def test_sample_layers_and_first_rows(tmp_path):
    spec = parse_spec({"layers": [{"sample": "layer0.query"}],
                       "grid": {"presets": ["2:4"], "methods": ["magnitude"], "first_rows": 4}})
    p = plan(spec, device="cpu")
    assert len(p.trials) == 1 and p.trials[0].rows == (0, 1, 2, 3)
    rep = sweep(spec, store=tmp_path / "r.sqlite")
    run = RunStore(tmp_path / "r.sqlite").get(rep.run_ids[0])
    assert run.status == "done" and run.source.startswith("sample:")
    # only the sampled rows are pruned
    assert run.sparsity == pytest.approx(0.5 * 4 / 384, rel=1e-5)


def test_a_layer_in_memory_and_a_bad_one(tmp_path):
    lay = crop("mine", "layer0.value", 16, 32)
    rep = sweep({"layers": [lay], "grid": {"presets": ["2:4"], "methods": ["obd"]}},
                store=tmp_path / "r.sqlite")
    run = RunStore(tmp_path / "r.sqlite").get(rep.run_ids[0])
    assert (run.layer, run.status, run.shape) == ("mine", "done", (16, 32))
    assert run.layer_hash == layer_hash(lay.weight, lay.hessian)
    with pytest.raises(SpecError) as e:
        parse_spec({"layers": [lay.weight], "grid": {"presets": ["2:4"], "methods": ["obd"]}})
    assert e.value.argument == "layers[0]"


def test_checkpoint_layers_get_dense_hessians(tmp_path):
    from obsviz.calibrate import hessians_from_checkpoint, minilm_checkpoint_dir

    model = minilm_checkpoint_dir()
    if model is None:
        pytest.skip("the MiniLM checkpoint package is not installed")
    (tmp_path / "calib.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20)
    name = "encoder.layer.0.attention.self.query"
    # a spec built in Python (no base folder): its paths are used as given
    spec = parse_spec({"layers": [{"checkpoint": str(model), "text": str(tmp_path / "calib.txt"),
                                   "names": [name], "max_tokens": 64, "seq_len": 32}],
                       "grid": {"presets": ["2:4"], "methods": ["magnitude"]}})
    from obsviz.sweep import check_checkpoint_memory, checkpoint_hessian_bytes

    # memory checked from the weight files' headers before anything is allocated
    src = spec.layers[0]
    assert checkpoint_hessian_bytes(src) == 12 * 384 * 384
    every = checkpoint_hessian_bytes(replace(src, names=None))
    assert every >= 12 * (6 * (4 * 384**2 + 1536**2) + 6 * 384**2)  # 36 Linear layers at least
    with pytest.raises(ArgumentError) as e:
        check_checkpoint_memory(src, free=2 * 12 * 384 * 384 - 2)
    assert e.value.argument == "layers" and "more than half" in str(e.value)
    check_checkpoint_memory(src, free=2 * 12 * 384 * 384)
    p = plan(spec, device="cpu")
    ref = hessians_from_checkpoint(model, (tmp_path / "calib.txt").read_text(), [name],
                                   max_tokens=64, seq_len=32)[0]
    assert p.hashes == [layer_hash(ref.weight, ref.hessian)]
    assert p.layers[0].hessian.shape == (384, 384)


# ---- the spec: every field checked, named ------------------------------------------------------


GOOD = {"layers": [{"sample": "toy"}], "grid": {"presets": ["2:4"], "methods": ["magnitude"]}}


def _with(path: str, value):
    import copy

    spec = copy.deepcopy(GOOD)
    *head, last = path.split(".")
    node = spec
    for k in head:
        node = node[int(k)] if k.isdigit() else node[k]
    key = int(last) if last.isdigit() else last
    if value is _DROP:
        del node[key]
    else:
        node[key] = value
    return spec


_DROP = object()


@pytest.mark.parametrize("path, value, field_, words", [
    ("colour", "red", "colour", "unknown field"),
    ("name", "", "name", "non-empty"),
    ("device", "tpu", "device", "unknown"),
    ("layers", [], "layers", "at least one"),
    ("layers.0", "toy", "layers[0]", "table"),
    ("layers.0.file", "x.safetensors", "layers[0]", "exactly one"),
    ("layers.0.sample", "nope", "layers[0].sample[0]", "not a shipped sample"),
    ("layers.0.names", ["a"], "layers[0].names", "for file and checkpoint"),
    ("layers.0.text", "a.txt", "layers[0].text", "checkpoint layers only"),
    ("layers.0.colour", 1, "layers[0].colour", "unknown field"),
    ("grid", _DROP, "grid", "required"),
    ("grid.presets", ["3:2"], "grid.presets[0]", "n="),
    ("grid.presets", [7], "grid.presets[0]", "must be a str"),
    ("grid.presets", [], "grid.presets", "at least one geometry"),
    ("grid.methods", _DROP, "grid.methods", "required"),
    ("grid.methods", ["magnitude", "obs"], "grid.methods[1]", "unknown"),
    ("grid.methods", [{"method": "split", "ng": 2}], "grid.methods[0].ng", "not an option"),
    ("grid.methods", [{"method": "split", "n_splits": "2"}], "grid.methods[0].n_splits",
     "must be an integer"),
    ("grid.methods", [{"method": "split", "n_splits": 0}], "grid.methods[0].n_splits",
     "n_splits=0"),
    ("grid.methods", [{"method": "true_obs", "c_dtype": "int8"}], "grid.methods[0].c_dtype",
     "not a float dtype"),
    ("grid.damp", [-1.0], "grid.damp[0]", "from 0 to"),
    ("grid.damp", [float("nan")], "grid.damp[0]", "from 0 to"),
    ("grid.damp", [1e308], "grid.damp[0]", "from 0 to"),
    ("grid.nnz", [-1], "grid.nnz[0]", ">= 0"),
    ("grid.nnz", [True], "grid.nnz[0]", "must be a int"),
    ("grid.first_rows", 0, "grid.first_rows", "positive"),
    ("grid.geometries", [{"block": [1, 1]}], "grid.geometries[0].scope", "required"),
    ("grid.geometries", [{"block": [1, 1], "scope": [1, 4]}], "grid.geometries[0].nnz",
     "needs nnz"),
    ("grid.geometries", [{"block": "1,1", "scope": [1, 4], "nnz": 2}],
     "grid.geometries[0].block", "list of 1 to 8 integers"),
    ("grid.geometries", [{"block": [1, 1], "scope": [1, 4], "nnz": 2, "skew": 1}],
     "grid.geometries[0].skew", "unknown field"),
    ("grid.speed", 3, "grid.speed", "unknown field"),
])
def test_every_field_is_checked_and_named(path, value, field_, words):
    with pytest.raises(SpecError) as e:
        parse_spec(_with(path, value))
    assert e.value.argument == field_
    assert words in str(e.value) and field_ in str(e.value)


def test_spec_files_bad_toml_and_missing_paths(tmp_path):
    (tmp_path / "bad.toml").write_text("[[layers]\nfile = ")
    with pytest.raises(SpecError, match="bad.toml: spec: not valid TOML"):
        load_spec(tmp_path / "bad.toml")
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "absent.toml")
    (tmp_path / "s.toml").write_text('[[layers]]\nfile = "gone.safetensors"\n'
                                     '[grid]\npresets = ["2:4"]\nmethods = ["wanda"]\n')
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path / "s.toml")
    assert e.value.argument == "layers[0].file" and "gone.safetensors" in str(e.value)
    (tmp_path / "c.toml").write_text(f'[[layers]]\ncheckpoint = "{tmp_path.name}"\n'
                                     '[grid]\npresets = ["2:4"]\nmethods = ["wanda"]\n')
    with pytest.raises(SpecError, match="not a checkpoint folder"):
        load_spec(tmp_path / "c.toml")


def test_api_arguments(tmp_path):
    from obsviz import ArgumentError

    for kw, arg in [({"executor": "dask"}, "executor"), ({"address": "x:1"}, "address"),
                    ({"max_retries": -1}, "max_retries")]:
        with pytest.raises(ArgumentError) as e:
            sweep(GOOD, store=tmp_path / "r.sqlite", **kw)
        assert e.value.argument == arg
    with pytest.raises(ArgumentError) as e:
        sweep(42, store=tmp_path / "r.sqlite")
    assert e.value.argument == "spec"


def test_trials_for_a_cuda_cluster_are_planned_without_a_local_gpu():
    spec = parse_spec({"layers": [{"sample": "toy"}],
                       "grid": {"presets": ["2:4"], "methods": ["magnitude", "true_obs"]}})
    cpu = plan(spec, "cpu", here=False).trials
    gpu = plan(spec, "cuda", here=False).trials
    assert [t.device for t in gpu] == ["cuda", "cuda"]
    assert gpu[1].options["c_dtype"] == "float16" and cpu[1].options["c_dtype"] == "float32"
    assert {t.key for t in cpu}.isdisjoint(t.key for t in gpu)  # another computation
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            plan(spec, "cuda")  # run here: checked against this machine


def test_duplicate_grid_points_run_once(tmp_path):
    spec = parse_spec({"layers": [{"sample": ["toy", "toy"]}],
                       "grid": {"presets": ["2:4", "2:4"], "nnz": [2, 2],
                                "methods": ["magnitude", {"method": "magnitude"}],
                                "damp": [0.01, 0.01]}})
    assert len(plan(spec, device="cpu").trials) == 1


def test_cli_warns_before_a_choice_that_prunes_nothing(tmp_path, capsys):
    from obsviz.cli import main

    spec = tmp_path / "b16.toml"
    spec.write_text('[[layers]]\nsample = "layer0.query"\n[grid]\npresets = ["block16"]\n'
                    'nnz = [1, 2]\nmethods = ["magnitude"]\n')
    assert main(["sweep", str(spec), "--store", str(tmp_path / "r.sqlite"), "-q",
                 "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "warning: block16 at nnz = 2 keeps all 2 blocks of every scope: nothing is " \
           "pruned" in err and "(1 trial)" in err
    assert "block16 at nnz = 2  0.0%" in out


# ---- Ray: a real local cluster, started once for this module ----------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False,
             runtime_env=ray_runtime_env(), log_to_driver=False)
    # test helpers below travel to the workers by value (tests/ is not on their path)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


SMALL = {"name": "small",
         "layers": [{"file": "layers.safetensors", "names": [QUERY, "key", "odd"]}],
         "grid": {"presets": ["2:4", "coupled-2:4"],
                  "methods": ["magnitude", "sparsegpt", "interleaved"]}}


def _results(db):
    return {r.key: (r.status, r.rel_error, r.error and r.error.split(":")[0])
            for r in RunStore(db).runs()}


def raising_trial(fail_index: int, W, H, trial):
    if trial.index == fail_index:
        raise RuntimeError(f"trial {trial.index} exploded")
    return run_trial(W, H, trial)


def killing_trial(marker: str, kill_index: int, W, H, trial):
    """Kill this worker process on the first attempt of one trial."""
    if trial.index == kill_index and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return run_trial(W, H, trial)


def test_ray_equals_local_and_a_raising_trial_is_recorded(ray_cluster, spec_dir, tmp_path):
    from obsviz.sweep import _ray_device

    assert _ray_device(ray_cluster, None) == "cpu"  # this cluster has no GPU
    spec = parse_spec(SMALL, base=spec_dir)
    local = sweep(spec, store=tmp_path / "local.sqlite", device="cpu")
    remote = sweep(spec, executor="ray", store=tmp_path / "ray.sqlite", device="cpu")
    assert (local.total, local.done, local.failed) == (remote.total, remote.done,
                                                       remote.failed) == (18, 15, 3)
    a, b = RunStore(tmp_path / "local.sqlite"), RunStore(tmp_path / "ray.sqlite")
    ra = {r.key: r for r in a.runs()}
    rb = {r.key: r for r in b.runs()}
    assert ra.keys() == rb.keys()
    for key, x in ra.items():
        y = rb[key]
        assert (x.status, x.layer, x.geometry, x.method, x.error) == (y.status, y.layer,
                                                                       y.geometry, y.method,
                                                                       y.error)
        if x.status == "done":
            assert x.rel_error == pytest.approx(y.rel_error, rel=1e-6, abs=1e-9)
            assert x.mask_file == y.mask_file  # identical masks: the same content address
            torch.testing.assert_close(a.tensors(x.id)["weight"], b.tensors(y.id)["weight"],
                                       rtol=1e-5, atol=1e-6)

    # a trial whose task raises is recorded failed with its message; the others finish
    boom = sweep(spec, executor="ray", store=tmp_path / "boom.sqlite", device="cpu",
                 trial_fn=functools.partial(raising_trial, 4))
    runs = RunStore(tmp_path / "boom.sqlite").runs()
    assert (boom.done, boom.failed, len(runs)) == (14, 4, 18)
    exploded = [r for r in runs if r.error and "exploded" in r.error]
    assert len(exploded) == 1 and exploded[0].method == "sparsegpt"
    # resume on Ray: only the failed trial that can succeed runs again
    again = sweep(spec, executor="ray", store=tmp_path / "boom.sqlite", device="cpu")
    assert (again.done, again.failed, again.skipped) == (1, 3, 14)
    assert _results(tmp_path / "boom.sqlite") == _results(tmp_path / "ray.sqlite")


def test_killed_worker_none_lost_none_duplicated(ray_cluster, spec_dir, tmp_path):
    spec = parse_spec({**SMALL, "layers": [{"file": "layers.safetensors", "names": ["key"]}]},
                      base=spec_dir)
    db = tmp_path / "kill.sqlite"
    marker = tmp_path / "killed"
    rep = sweep(spec, executor="ray", store=db, device="cpu",
                trial_fn=functools.partial(killing_trial, str(marker), 2))
    assert marker.exists()  # a worker really died mid-trial
    keys = [k for (k,) in _sql(db, "SELECT key FROM runs")]
    assert len(keys) == len(set(keys)) == rep.total == 6  # none lost, none duplicated
    assert rep.done == 6 and rep.failed == 0
    # with no retries, the killed trial is recorded failed and the others still finish
    db0 = tmp_path / "kill0.sqlite"
    marker.unlink()
    rep0 = sweep(spec, executor="ray", store=db0, device="cpu", max_retries=0,
                 trial_fn=functools.partial(killing_trial, str(marker), 2))
    runs = RunStore(db0).runs()
    assert (rep0.done, rep0.failed, len(runs)) == (5, 1, 6)
    (dead,) = [r for r in runs if r.status == "failed"]
    assert dead.method == "interleaved" and dead.geometry == "2:4"
    assert "Worker" in dead.error or "died" in dead.error.lower()


def test_cli_progress_summary_and_exit_codes(ray_cluster, spec_dir, tmp_path, capsys):
    from obsviz.cli import main

    db = tmp_path / "cli.sqlite"
    assert main(["sweep", str(spec_dir / "example.toml"), "--executor", "ray", "--store",
                 str(db), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "6/6" in err and "ETA" in err
    assert "6 trials, 6 run, 0 already done, 0 failed" in out
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("geometry"))
    table = [ln.split() for ln in lines[head + 1:head + 7]]
    runs = {(r.geometry, r.method): r for r in RunStore(db).runs()}
    for geometry, sparsity, method, damp, trials, failed, pct, _, secs in table:
        r = runs[(geometry, method)]
        assert (trials, failed, damp) == ("1", "0", "0.01") and sparsity == "50.0%"
        assert pct == f"{100 * r.rel_error:.2f}"
        assert secs == f"{r.seconds:.3f}"
    # resume from the command line: nothing runs again
    assert main(["sweep", str(spec_dir / "example.toml"), "--store", str(db), "-q"]) == 0
    assert "0 run, 6 already done" in capsys.readouterr().out
    # failed trials: recorded, listed, exit code 3; a bad spec: exit code 1, the field named
    spec = spec_dir / "odd.toml"
    spec.write_text('[[layers]]\nfile = "layers.safetensors"\nnames = ["odd"]\n'
                    '[grid]\npresets = ["coupled-2:4", "2:4"]\nmethods = ["magnitude"]\n')
    assert main(["sweep", str(spec), "--store", str(db), "-q"]) == 3
    out = capsys.readouterr().out
    assert "1 failed" in out and "failed: odd · coupled-2:4 · nnz 2 · magnitude:" in out
    spec.write_text('[[layers]]\nsample = "toy"\n[grid]\nmethods = ["magnitude"]\n')
    assert main(["sweep", str(spec), "--store", str(db)]) == 1
    assert "grid.presets" in capsys.readouterr().err


# ---- layers of equal contents under different names; a store that does not take writes -------


@pytest.fixture(scope="module")
def twins_dir(tmp_path_factory) -> Path:
    """Five layers in one file, two of them ("key" and "key copy") with equal contents."""
    d = tmp_path_factory.mktemp("twins")
    key = crop("key", "layer0.key", 16, 32)
    save_layers(d / "layers.safetensors", [
        crop("q", "layer0.query", 16, 32), key,
        Layer("key copy", key.weight.clone(), key.hessian.clone(), key.nsamples, "copy"),
        crop("v", "layer0.value", 16, 32), crop("o", "layer5.query", 16, 32)])
    (d / "twins.toml").write_text('[[layers]]\nfile = "layers.safetensors"\n[grid]\n'
                                  'presets = ["2:4", "1:4"]\nmethods = ["magnitude", '
                                  '"sparsegpt"]\n')
    return d


def test_layers_of_equal_contents_each_keep_their_name(twins_dir, tmp_path):
    from obsviz.sweep import summary_table

    db = tmp_path / "runs.sqlite"
    rep = sweep(twins_dir / "twins.toml", store=db)
    assert (rep.total, rep.done, rep.shared, rep.skipped) == (20, 16, 4, 0)
    assert rep.same_as == {"key copy": "key"} and rep.left == 0 and rep.unwritten == []
    assert len(rep.run_ids) == 20 and len(set(rep.run_ids)) == 16   # computed once
    store = RunStore(db)
    shown = store.runs(sweep="twins")
    by_layer = {}
    for r in shown:
        by_layer.setdefault(r.layer, []).append(r)
    assert sorted(by_layer) == ["key", "key copy", "o", "q", "v"]
    assert all(len(rs) == 4 for rs in by_layer.values())
    copy = {(r.geometry, r.method): r for r in by_layer["key copy"]}
    for r in by_layer["key"]:
        twin = copy[(r.geometry, r.method)]
        assert twin.id == r.id and twin.extra["stored_layer"] == "key"
    assert store.count() == 16 and store.sweeps()[0]["runs"] == 20
    assert [row["trials"] for row in summary_table(store, rep.run_ids)] == [5, 5, 5, 5]
    # resumed under another name: every name found done, nothing computed
    again = sweep(twins_dir / "twins.toml", store=db, name="again")
    assert (again.done, again.skipped, again.shared) == (0, 20, 0)
    assert sorted({r.layer for r in store.runs(sweep="again")}) == sorted(by_layer)


def test_cli_sweep_reports_layers_merged(twins_dir, tmp_path):
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-m", "obsviz", "sweep", str(twins_dir / "twins.toml"),
                          "--store", str(tmp_path / "r.sqlite")], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "20 trials" in out.stdout and "16 run" in out.stdout
    assert "'key copy' has the same weight and Hessian as 'key'" in out.stdout


def test_a_locked_store_neither_stops_the_sweep_nor_loses_its_trials(spec_dir, tmp_path):
    import threading
    import time

    db = tmp_path / "runs.sqlite"
    store = RunStore(db, busy_timeout=0.1)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")      # another writer holds the lock past the timeout
    seen = []
    released = threading.Event()

    def progress(s):
        seen.append(s.unwritten)
        if s.done == 3 and not released.is_set():   # then lets go, mid-sweep
            holder.execute("ROLLBACK")
            released.set()

    rep = sweep(spec_dir / "example.toml", store=store, progress=progress, retry_wait_s=0)
    assert max(seen) >= 2 and rep.unwritten == [] and rep.done == 6
    assert store.count() == 6 and len(store.runs(sweep="example")) == 6
    # held for good: the sweep ends, every trial computed, and says which were not written
    holder.execute("BEGIN IMMEDIATE")
    try:
        t0 = time.perf_counter()
        rep = sweep({"layers": [{"sample": "toy"}],
                     "grid": {"presets": ["2:4"], "methods": ["magnitude", "wanda"]}},
                    store=store, write_retries=2, retry_wait_s=0)
        assert time.perf_counter() - t0 < 30
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert rep.done == 2 and [label for label, _ in rep.unwritten] == [
        "magnitude · 2:4 · nnz 2 · toy", "wanda · 2:4 · nnz 2 · toy"]
    assert all("locked by another writer" in why for _, why in rep.unwritten)
    assert store.count() == 6


def test_a_read_only_store_is_refused_before_the_sweep(spec_dir, tmp_path, monkeypatch):
    from obsviz.store import StoreError

    db = tmp_path / "runs.sqlite"
    RunStore(db).close()
    store = RunStore(db)
    monkeypatch.setattr(store, "readonly", True)   # the real filesystem case: test_store
    with pytest.raises(StoreError, match="read-only"):
        sweep(spec_dir / "example.toml", store=store)
