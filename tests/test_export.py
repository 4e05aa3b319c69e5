"""``obsviz.save_pruned``: one writer for a pruned layer, read back by ``obsviz.load_layer``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

import obsviz
from obsviz.export import load_report, save_pruned
from obsviz.layers import LayerFileError, list_layers, load_layer
from obsviz.metrics import summarize


@pytest.fixture(scope="module")
def pruned():
    layer = obsviz.load_sample_layer("toy")
    geom = obsviz.Geometry.preset("2:4", layer.shape)
    res = obsviz.prune(layer.weight, layer.hessian, geom, 2, method="full", device="cpu")
    return layer, geom, res


def test_round_trip_through_a_file_keeps_weight_mask_hessian_and_report(tmp_path: Path, pruned):
    layer, geom, res = pruned
    report = summarize(layer.weight, layer.hessian, geom, res)
    out = tmp_path / "toy.full.safetensors"
    save_pruned(out, res, hessian=layer.hessian, name="toy", report=report,
                nsamples=layer.nsamples, source="toy, pruned (full, 2:4)", notes=["a note"])
    back = load_layer(out)
    assert back.name == "toy"
    assert torch.equal(back.weight, res.weight.float())
    assert torch.equal(back.mask, res.mask)
    torch.testing.assert_close(back.hessian, layer.hessian, rtol=0, atol=0)
    assert back.nsamples == layer.nsamples and "a note" in back.notes
    assert "pruned (full, 2:4)" in back.source
    got = load_report(out)
    assert got["method"] == "full" and got["rel_error"] == pytest.approx(res.rel_error)
    assert got == json.loads(json.dumps(report, default=str))
    # the pruned layer can be pruned again, or compared, as any layer file
    again = obsviz.prune(back.weight, back.hessian, geom, 2, method="full", device="cpu")
    assert torch.equal(again.mask, res.mask)


def test_bytes_and_buffers_give_the_same_file_as_a_path(tmp_path: Path, pruned):
    layer, _, res = pruned
    data = save_pruned(None, res, hessian=layer.hessian, name="toy")
    buf = io.BytesIO()
    save_pruned(buf, res.weight, res.mask, hessian=layer.hessian, name="toy")
    path = tmp_path / "t.safetensors"
    save_pruned(path, res, hessian=layer.hessian, name="toy")
    assert data == buf.getvalue() == path.read_bytes()
    back = load_layer(data, filename="download.safetensors")
    assert torch.equal(back.mask, res.mask) and back.hessian is not None


def test_without_a_hessian_the_file_holds_weight_and_mask(pruned):
    _, _, res = pruned
    data = save_pruned(None, res, name="toy")
    with pytest.raises(LayerFileError, match="no Hessian"):
        load_layer(data, filename="p.safetensors")
    back = load_layer(data, filename="p.safetensors", require_hessian=False)
    assert back.hessian is None and torch.equal(back.mask, res.mask)
    assert load_report(data) is None


def test_a_layer_file_without_mask_loads_with_mask_none(pruned):
    layer = obsviz.load_sample_layer("toy")
    assert layer.mask is None


@pytest.mark.parametrize("kwargs, argument", [
    (dict(mask=torch.ones(3, 3, dtype=torch.bool)), "mask"),
    (dict(hessian=torch.eye(3)), "hessian"),
    (dict(name=""), "name"),
    (dict(name="a.weight"), "name"),
])
def test_bad_arguments_are_argument_errors(pruned, kwargs, argument):
    _, _, res = pruned
    with pytest.raises(obsviz.ArgumentError) as info:
        save_pruned(None, res.weight, **{"mask": res.mask, **kwargs})
    assert info.value.argument == argument


def test_a_mask_that_is_not_zero_or_one_is_refused_on_load(tmp_path: Path, pruned):
    from safetensors.torch import save_file

    layer, _, res = pruned
    bad = tmp_path / "bad.safetensors"
    save_file({"toy.weight": res.weight.float().contiguous(),
               "toy.hessian": layer.hessian.contiguous(),
               "toy.mask": torch.full(res.mask.shape, 2, dtype=torch.uint8)}, str(bad))
    with pytest.raises(LayerFileError, match="mask"):
        load_layer(bad)
    save_file({"toy.weight": res.weight.float().contiguous(),
               "toy.hessian": layer.hessian.contiguous(),
               "toy.mask": torch.ones(3, 3, dtype=torch.uint8)}, str(bad))
    with pytest.raises(LayerFileError, match="mask"):
        list_layers(bad)


def test_the_apps_download_is_the_same_format_and_loads_back(pruned):
    from ui import exports, runs
    from ui.layers import ActiveLayer

    layer, geom, res = pruned
    job = runs.Job(layer=ActiveLayer(layer, "digest", "toy", "sample"), geometry=geom, nnz=2)
    run = runs.Run(key="k", job=job, method="full", result=res,
                   report=summarize(layer.weight, layer.hessian, geom, res), label="full")
    data = exports.safetensors_bytes(run)
    back = load_layer(data, filename="obsviz-full.safetensors")
    assert torch.equal(back.mask, res.mask) and torch.equal(back.weight, res.weight.float())
    torch.testing.assert_close(back.hessian, layer.hessian, rtol=0, atol=0)
    assert load_report(data)["method"] == "full"
