"""The layer-sensitivity scan and the plans built from it (obsviz.sensitivity), on tiny random BERT
and GPT-2 models built from transformers configs: each scan entry against the layer pruned alone
by hand, the exact properties (nnz = blocks per scope changes nothing, sparing every layer is the
dense model), plans stated as data, and Ray against the local executor on a real local cluster."""

from __future__ import annotations

import copy
import functools
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import test_model
import torch
from test_model import hand_hessian, make_run, modules, weight_of

from obsviz import ArgumentError, prune
from obsviz.model import Plan, resolve_plan, run_methods
from obsviz.sensitivity import (
    check_plan,
    check_scan,
    curve,
    damage,
    fewest_dense,
    layer_choices,
    layer_kind,
    ranking,
    scan,
    scan_layer,
    spare_plan,
)
from obsviz.store import RunStore

tokenizer = test_model.tokenizer   # the fixture test_model's tests use


def set_weight(mod, W):
    with torch.no_grad():
        mod.weight.copy_(W if isinstance(mod, torch.nn.Linear) else W.T)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_each_scan_entry_is_the_layer_pruned_alone_and_evaluated(kind, tokenizer):
    run = make_run(kind, tokenizer)
    plan = Plan("2:4", method="sparsegpt")
    dense_state = copy.deepcopy(run.dense.state_dict())
    got = scan(run, plan)
    layers = resolve_plan(run.dense, plan)
    assert [e["name"] for e in got["layers"]] == [lp.name for lp in layers]
    assert not got["stopped"] and got["total"] == len(layers)
    dense_metrics = got["dense"]
    for lp, entry in zip(layers, got["layers"], strict=True):
        # by hand: H from the whole dense model's forward pass, the layer pruned, put in a copy
        H = hand_hessian(run.dense, lp.name, run)
        W = weight_of(modules(run.dense)[lp.name]).float()
        alone = prune(W, H, lp.geometry, lp.nnz, method="sparsegpt")
        model = copy.deepcopy(run.dense)
        set_weight(modules(model)[lp.name], alone.weight)
        ev = run.evaluate(model)
        assert entry["rel_error"] == pytest.approx(float(alone.rel_error), rel=1e-5, abs=1e-9)
        assert entry["sparsity"] == pytest.approx(0.5)
        for key, value in ev["metrics"].items():
            assert entry["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        assert entry["drift"] == pytest.approx(ev["drift"], rel=1e-6, abs=1e-12)
        assert entry["damage"] == pytest.approx(damage(run.kind, ev["metrics"], dense_metrics))
        # only the blocks from the layer's own onward move
        assert all(d == 0 for d in entry["drift"][:lp.block]) and entry["drift"][-1] > 0
    # the dense model is untouched
    assert all(torch.equal(v, run.dense.state_dict()[k]) for k, v in dense_state.items())
    if kind == "gpt2":
        assert dense_metrics["perplexity"] == pytest.approx(
            run.evaluate(run.dense)["metrics"]["dense_perplexity"])
        assert {e["kind"] for e in got["layers"]} == {"query·key·value", "attention output",
                                                       "MLP up", "MLP down"}
    else:
        assert {e["kind"] for e in got["layers"]} == {"query", "key", "value",
                                                       "attention output", "MLP up", "MLP down"}
    # the ranking is by damage
    dmg = [e["damage"] for e in ranking(got)]
    assert dmg == sorted(dmg, reverse=True)
    assert check_scan(json.loads(json.dumps(got))) is not None


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_nnz_equal_to_blocks_per_scope_changes_nothing(kind, tokenizer):
    run = make_run(kind, tokenizer)
    got = scan(run, Plan("2:4", nnz=4, method="sparsegpt"))
    for e in got["layers"]:
        assert e["sparsity"] == 0 and e["rel_error"] == 0, e["name"]
        assert e["drift"] == [0.0] * len(run.blocks)
        assert e["damage"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_a_plan_sparing_every_layer_is_the_dense_model(kind, tokenizer):
    run = make_run(kind, tokenizer)
    plan = Plan("2:4", method="magnitude")
    got = scan(run, plan)
    n = len(got["layers"])
    every = check_plan(run, got, plan, n)
    assert set(every["choices"].values()) == {"dense"} and every["pruned_fraction"] == 0
    assert every["damage"] == pytest.approx(0.0, abs=1e-12)
    if kind == "gpt2":
        assert every["metrics"]["perplexity"] == every["metrics"]["dense_perplexity"]
    else:
        assert every["metrics"]["last_hidden_rel_error"] == 0.0
    # k = 0 is the uniform plan, checked by the same sequential run as run_methods
    uniform = check_plan(run, got, plan, 0)
    ref = run_methods(run, plan, ["magnitude"])["methods"]["magnitude"]
    assert uniform["metrics"] == ref["metrics"]
    assert uniform["pruned_fraction"] == pytest.approx(0.5)


def test_plans_from_a_scan_are_data_and_checked_by_real_runs(tokenizer):
    run = make_run("bert", tokenizer)
    base = Plan("2:4", method="sparsegpt")
    got = scan(run, base)
    top = [e["name"] for e in ranking(got)]
    # two most sensitive layers given 4:8, stated as overrides with their exact names
    plan = spare_plan(base, top[:2], "4:8")
    desc = plan.describe()
    assert [o["pattern"] for o in desc["overrides"]] == top[:2]
    assert Plan.from_dict(json.loads(json.dumps(desc))) == plan
    choices = layer_choices(run, plan, top)
    assert [choices[n] for n in top[:2]] == ["4:8", "4:8"]
    assert set(choices[n] for n in top[2:]) == {"2:4"}
    report: dict = {}
    c = check_plan(run, got, base, 2, "4:8", report=report)
    pruned = {lr["name"]: lr["geometry"] for lr in report["methods"]["sparsegpt"]["layers"]}
    assert pruned[top[0]] == "4:8" and pruned[top[-1]] == "2:4"
    assert c["pruned_fraction"] == pytest.approx(0.5)   # 4:8 removes half too
    # the curve: each point a real run; sparing layers lowers the pruned fraction
    pts = curve(run, got, base, [0, 3, len(top)])
    fr = [p["pruned_fraction"] for p in pts]
    assert fr[0] == pytest.approx(0.5) and fr[-1] == 0 and fr[0] > fr[1] > fr[2]
    assert pts[-1]["damage"] == pytest.approx(0.0, abs=1e-12)
    # fewest dense layers within a target: the answer's real run is within, k - 1's is not
    target = (pts[0]["damage"] + pts[1]["damage"]) / 2
    best = fewest_dense(run, got, base, target)
    by_k = {c["k"]: c for c in best["checks"]}
    assert best["found"] and by_k[0]["damage"] > target
    k = best["k"]
    assert k == len(top) or by_k[k]["damage"] <= target
    assert k - 1 in by_k and by_k[k - 1]["damage"] > target
    assert fewest_dense(run, got, base, 10.0)["k"] == 0
    # checks made already are reused, not run again: the same answer, only those checks
    made = fewest_dense(run, got, base, target, known=best["checks"],
                        on_check=lambda c, r: pytest.fail("ran a known k again"))
    assert made["k"] == k and made["checks"] == best["checks"]
    with pytest.raises(ArgumentError, match="within"):
        fewest_dense(run, got, base, float("nan"))
    with pytest.raises(ArgumentError, match="k="):
        check_plan(run, got, base, len(top) + 1)


def test_layer_kinds_by_name():
    assert [layer_kind(n) for n in (
        "attention.self.query", "attention.self.key", "attention.self.value",
        "attention.output.dense", "intermediate.dense", "output.dense", "attn.c_attn",
        "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "self_attn.q_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.down_proj", "adapter.thing")] == [
        "query", "key", "value", "attention output", "MLP up", "MLP down", "query·key·value",
        "attention output", "MLP up", "MLP down", "query", "attention output", "MLP up",
        "MLP down", "other"]


def test_stop_and_a_hostile_scan(tokenizer):
    run = make_run("bert", tokenizer)
    seen = []
    got = scan(run, Plan("2:4", method="magnitude"), stop=lambda: len(seen) >= 3,
               on_layer=lambda e, s: seen.append(e["name"]))
    assert got["stopped"] and len(got["layers"]) == 3
    good = json.loads(json.dumps(got))
    check_scan(good)
    for bad, match in ((lambda d: d["layers"][0].update(damage="x"), "damage"),
                       (lambda d: d["layers"][1].update(shape=[1, 2, 3]), "shape"),
                       (lambda d: d["model"].update(kind="vision"), "kind"),
                       (lambda d: d.update(checks=[{"k": 1, "spared": ["nope"],
                                                    "pruned_fraction": 0.1}]), "spared"),
                       (lambda d: d["layers"][2]["metrics"].pop("cosine"), "cosine")):
        d = copy.deepcopy(good)
        bad(d)
        with pytest.raises(ArgumentError, match=match):
            check_scan(d)
    with pytest.raises(ArgumentError, match="executor"):
        scan(run, Plan(), executor="dask")


def test_scans_are_kept_in_the_run_store_and_reopen(tokenizer, tmp_path):
    run = make_run("bert", tokenizer)
    db = RunStore(tmp_path / "runs.sqlite")
    ids: list[int] = []
    got = scan(run, Plan("2:4", method="magnitude"),
               on_layer=lambda e, s: ids.__setitem__(slice(None), [db.record_scan(
                   s, status="running", scan_id=ids[0] if ids else None)]))
    db.record_scan(got, status="done", scan_id=ids[0])
    got["checks"] = [check_plan(run, got, Plan("2:4", method="magnitude"), 2)]
    db.record_scan(got, status="done", scan_id=ids[0])
    import sqlite3

    from obsviz.owner import process_token

    with sqlite3.connect(tmp_path / "runs.sqlite") as con:   # its owner: this process
        assert con.execute("SELECT owner FROM sensitivity_scans").fetchone()[0] == process_token()
    again = RunStore(tmp_path / "runs.sqlite")      # a restart
    (row,) = again.scans()
    assert (row.id, row.status, row.layers, row.checks) == (ids[0], "done", len(got["layers"]),
                                                            1)
    back = again.scan(row.id)
    assert back.scan["layers"] == json.loads(json.dumps(got["layers"]))
    assert back.scan["checks"][0]["spared"] == got["checks"][0]["spared"]


# ---- Ray: a real local cluster -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    from obsviz.sweep import ray_runtime_env

    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False,
             runtime_env=ray_runtime_env(), log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


def killing_layer(marker: str, name: str, run, work, lp, H, n, dense):
    """Kill this worker on the first attempt of one layer."""
    if lp.name == name and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return scan_layer(run, work, lp, H, n, dense)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_ray_scan_equals_local_and_a_dead_worker_is_retried(kind, ray_cluster, tokenizer,
                                                             tmp_path):
    run = make_run(kind, tokenizer)
    plan = Plan("2:4", method="sparsegpt")
    local = scan(run, plan)
    victim = local["layers"][2]["name"]
    marker = tmp_path / "killed"
    remote = scan(run, plan, executor="ray",
                  layer_fn=functools.partial(killing_layer, str(marker), victim))
    assert marker.exists()    # a worker really died mid-layer, and its layer ran again
    assert remote["failed"] == [] and not remote["stopped"]
    by_name = {e["name"]: e for e in remote["layers"]}
    assert sorted(by_name) == sorted(e["name"] for e in local["layers"])
    for e in local["layers"]:
        r = by_name[e["name"]]
        for key in ("rel_error", "sparsity"):
            assert r[key] == pytest.approx(e[key], rel=1e-6, abs=1e-12), (e["name"], key)
        # damage is a difference of numbers near 1 (perplexity ÷ dense − 1, 1 − cosine):
        # equal to what the metrics' own relative agreement allows
        assert r["damage"] == pytest.approx(e["damage"], abs=1e-6), e["name"]
        for key, v in e["metrics"].items():
            assert r["metrics"][key] == pytest.approx(v, rel=1e-6, abs=1e-12)


def test_ray_model_run_equals_local(ray_cluster, tokenizer, tmp_path):
    run = make_run("gpt2", tokenizer)
    plan = Plan("2:4", method="sparsegpt")
    methods = ["magnitude", "sparsegpt"]
    local = run_methods(run, plan, methods)
    seen = []
    remote = run_methods(run, plan, methods, executor="ray", out_dir=tmp_path / "out",
                         on_method=lambda m, e: seen.append(m))
    assert sorted(seen) == methods and list(remote["methods"]) == methods
    for m in methods:
        a, b = local["methods"][m], remote["methods"][m]
        assert b["metrics"]["perplexity"] == pytest.approx(a["metrics"]["perplexity"], rel=1e-6)
        assert b["drift"] == pytest.approx(a["drift"], rel=1e-6, abs=1e-12)
        assert [lr["rel_error"] for lr in b["layers"]] == pytest.approx(
            [lr["rel_error"] for lr in a["layers"]], rel=1e-6)
    # the checkpoints the driver wrote from the tasks' weights reproduce the metric
    from obsviz.model import load_model

    model, _ = load_model(tmp_path / "out" / "sparsegpt")
    ev = run.evaluate(model)
    assert ev["metrics"]["perplexity"] == pytest.approx(
        remote["methods"]["sparsegpt"]["metrics"]["perplexity"], rel=1e-5)


def test_a_version_3_store_gains_the_scans_table(tmp_path):
    import sqlite3

    from obsviz.store import MIGRATIONS, SCHEMA_VERSION

    path = tmp_path / "v3.sqlite"
    con = sqlite3.connect(path)          # what obsviz with schema 3 wrote
    con.executescript(MIGRATIONS[0] + MIGRATIONS[1] + MIGRATIONS[2] + "PRAGMA user_version = 3;")
    con.commit()
    con.close()
    store = RunStore(path)
    assert store.schema_version == SCHEMA_VERSION >= 4
    assert store.scans() == [] and store.model_runs() == []
    with pytest.raises(KeyError):
        store.scan(1)


def test_cli_sensitivity_writes_the_scan_and_its_plans(tokenizer, tmp_path, capsys):
    from test_model import CAL, HELD_OUT, tiny

    from obsviz.cli import main

    model_dir = tmp_path / "tiny-gpt2"
    tiny("gpt2", tokenizer.vocab_size).save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    cal, held = tmp_path / "cal.txt", tmp_path / "held.txt"
    cal.write_text(CAL[:8000])
    held.write_text(HELD_OUT[:8000])
    args = ["sensitivity", str(model_dir), "--preset", "2:4", "--method", "sparsegpt",
            "--calibration", str(cal), "--eval", str(held), "--max-tokens", "200",
            "--max-eval-tokens", "200", "--seq-len", "32", "--out", str(tmp_path / "out"),
            "--store", str(tmp_path / "runs.sqlite"), "--curve", "0,2", "-q"]
    assert main(args) == 0
    data = json.loads((tmp_path / "out" / "sensitivity.json").read_text())
    check_scan(data)
    assert len(data["layers"]) == 8 and [c["k"] for c in data["checks"]] == [0, 2]
    e = data["layers"][0]
    assert {"name", "shape", "rel_error", "metrics", "damage"} <= set(e)
    printed = capsys.readouterr().out
    assert "most sensitive first" in printed and ranking(data)[0]["name"] in printed
    (row,) = RunStore(tmp_path / "runs.sqlite").scans()
    assert (row.layers, row.checks, row.status) == (8, 2, "done")
    assert main(args) == 2      # sensitivity.json exists: refused without --force


def test_the_damage_figure_sorts_colours_and_shortens():
    from obsviz.figures.sensitivity import KIND_COLOURS, MAX_TICK, curve_figure, damage_figure

    def entry(name, block, kind, dmg):
        return {"name": name, "block": block, "kind": kind, "damage": dmg, "rel_error": 0.1}

    long = "enc.layer.1." + "wrapper_<b>x</b>_" * 6 + "value"
    data = {"model": {"block_list": "enc.layer"}, "damage": "1 − cosine",
            "layers": [entry("enc.layer.0.q", 0, "query", 0.01), entry(long, 1, "value", 0.05),
                       entry("enc.layer.0.fc", 0, "MLP up", 0.02)]}
    fig = damage_figure(data, selected="enc.layer.0.q")
    assert list(fig.layout.xaxis.categoryarray)[0].startswith("1 · wrapper_&lt;b&gt;")
    import html  # shortened first, then escaped: no entity is cut in half

    assert all(len(html.unescape(t)) <= MAX_TICK for t in fig.layout.xaxis.categoryarray)
    assert [t.name for t in fig.data] == ["query", "value", "MLP up"]
    assert [t.marker.color for t in fig.data] == [KIND_COLOURS[k] for k in
                                                  ("query", "value", "MLP up")]
    assert fig.data[1].customdata[0][0].endswith("&lt;/b&gt;_value")   # hover: whole, escaped
    assert list(fig.data[0].text) == ["0"] and fig.data[0].marker.line.width == 2.5
    pts = curve_figure([{"k": 0, "pruned_fraction": 0.5, "damage": 0.2},
                        {"k": 4, "pruned_fraction": 0.4, "damage": 0.1},
                        {"k": 9, "pruned_fraction": 0.3, "damage": None}])
    assert list(pts.data[0].x) == [40.0, 50.0] and list(pts.data[0].text) == ["4 spared",
                                                                             "0 spared"]
