"""Layer files in every format, inputs -> H, conv flattening, and one clear error per bad file."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from obsviz import layers as layers_mod
from obsviz.layers import (
    DEFAULT_MAX_BYTES,
    Layer,
    LayerFileError,
    LayerInfo,
    list_layers,
    load_layer,
    save_layers,
)


def _psd(K: int, seed: int = 0, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated inputs ``X`` ``(n, K)`` and their ``H = XᵀX / n`` (float64)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, K, generator=g, dtype=torch.float64)
    X[:, 1:] += 0.7 * X[:, :-1]
    return X, X.T @ X / n


def _weight(M: int, K: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(M, K, generator=torch.Generator().manual_seed(seed))


# ---- formats ---------------------------------------------------------------------------------


def test_save_layers_round_trip_keeps_order_shapes_and_provenance(tmp_path: Path) -> None:
    _, H1 = _psd(16)
    _, H2 = _psd(8, seed=3)
    written = [
        Layer("b.second", _weight(4, 16), H1.float(), 640, "made here", ["note one"]),
        Layer("a.first", _weight(3, 8), H2.float(), 0, "", []),
    ]
    path = tmp_path / "two.safetensors"
    save_layers(path, written)

    infos = list_layers(path)
    assert infos == [LayerInfo("b.second", (4, 16), "hessian (16, 16)"),
                     LayerInfo("a.first", (3, 8), "hessian (8, 8)")]
    first = load_layer(path)  # name=None: the first layer
    assert first.name == "b.second"
    assert first.nsamples == 640
    assert first.source == "two.safetensors (made here)"
    assert first.notes == ["note one"]
    second = load_layer(path, "a.first")
    assert second.weight.dtype == torch.float32 and second.hessian.dtype == torch.float32
    torch.testing.assert_close(second.weight, written[1].weight)
    torch.testing.assert_close(second.hessian, written[1].hessian)


def test_safetensors_with_many_layers_and_inputs(tmp_path: Path) -> None:
    X, H = _psd(12, n=50)
    path = tmp_path / "many.safetensors"
    save_file({
        "blk.0.q.weight": _weight(6, 12), "blk.0.q.hessian": H.float(),
        "blk.0.q.nsamples": torch.tensor(50),
        "blk.0.up.weight": _weight(24, 12), "blk.0.up.inputs": X.float(),
        "blk.0.up.bias": torch.zeros(24),  # extra keys are ignored
        "unrelated.weight": _weight(2, 2),  # a weight without H is not a layer
    }, str(path))
    names = {i.name: i for i in list_layers(path)}
    assert set(names) == {"blk.0.q", "blk.0.up"}
    assert names["blk.0.up"].hessian_source == "inputs (50, 12)"
    assert load_layer(path, "blk.0.q").nsamples == 50
    up = load_layer(path, "blk.0.up")
    assert up.nsamples == 50
    torch.testing.assert_close(up.hessian.double(), H, rtol=1e-5, atol=1e-6)
    assert any("XᵀX" in n for n in up.notes)


def test_inputs_are_accumulated_in_batches(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(layers_mod, "_INPUT_BATCH", 7)  # many small batches, N = 100
    X, H = _psd(10, n=100)
    path = tmp_path / "x.safetensors"
    save_file({"l.weight": _weight(5, 10), "l.inputs": X.float()}, str(path))
    layer = load_layer(path)
    assert layer.nsamples == 100
    torch.testing.assert_close(layer.hessian.double(), H, rtol=1e-5, atol=1e-6)


def test_inputs_as_batch_time_features_are_flattened(tmp_path: Path) -> None:
    X, H = _psd(8, n=60)
    path = tmp_path / "bt.npz"
    np.savez(path, **{"l.weight": _weight(3, 8).numpy(), "l.inputs": X.reshape(5, 12, 8).numpy()})
    assert list_layers(path)[0].hessian_source == "inputs (60, 8)"
    layer = load_layer(path)
    torch.testing.assert_close(layer.hessian.double(), H, rtol=1e-5, atol=1e-6)


def test_npz_with_many_layers(tmp_path: Path) -> None:
    X, H = _psd(8)
    path = tmp_path / "layers.npz"
    np.savez(path, **{"a.weight": _weight(4, 8).numpy(), "a.hessian": H.numpy(),
                      "a.nsamples": np.int64(64),
                      "b.weight": _weight(2, 8).double().numpy(), "b.inputs": X.numpy()})
    assert [i.name for i in list_layers(path)] == ["a", "b"]
    a = load_layer(path, "a")
    assert a.weight.dtype == torch.float32 and a.nsamples == 64
    torch.testing.assert_close(a.hessian, H.float())
    b = load_layer(path, "b")
    torch.testing.assert_close(b.hessian.double(), H, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ext", [".pt", ".pth"])
def test_torch_file_nested_dict_with_python_numbers(tmp_path: Path, ext: str) -> None:
    _, H = _psd(8)
    path = tmp_path / f"ckpt{ext}"
    torch.save({"enc": {"q": {"weight": _weight(4, 8), "hessian": H.float(), "nsamples": 64}},
                "step": 3, "comment": "ignored"}, path)
    [info] = list_layers(path)
    assert info == LayerInfo("enc.q", (4, 8), "hessian (8, 8)")
    layer = load_layer(path)
    assert layer.nsamples == 64
    torch.testing.assert_close(layer.hessian, H.float())


def test_bare_weight_and_hessian_is_one_layer_named_after_the_file(tmp_path: Path) -> None:
    _, H = _psd(8)
    path = tmp_path / "my_layer.safetensors"
    save_file({"weight": _weight(4, 8), "hessian": H.float()}, str(path))
    assert load_layer(path).name == "my_layer"
    torch.save({"weight": _weight(4, 8), "hessian": H.float()}, tmp_path / "other.pt")
    assert list_layers(tmp_path / "other.pt")[0].name == "other"


@pytest.mark.parametrize("ext", [".safetensors", ".npz", ".pt"])
def test_bytes_with_filename(tmp_path: Path, ext: str) -> None:
    X, H = _psd(8)
    tensors = {"u.weight": _weight(4, 8), "u.inputs": X.float()}
    path = tmp_path / f"up{ext}"
    if ext == ".safetensors":
        save_file(tensors, str(path))
    elif ext == ".npz":
        np.savez(path, **{k: v.numpy() for k, v in tensors.items()})
    else:
        torch.save(tensors, path)
    data = path.read_bytes()
    assert list_layers(data, filename=f"upload{ext}") == [LayerInfo("u", (4, 8), "inputs (64, 8)")]
    layer = load_layer(data, filename=f"upload{ext}")
    assert layer.source.startswith(f"upload{ext}")
    assert load_layer(memoryview(bytearray(data)), filename=f"upload{ext}").name == "u"
    torch.testing.assert_close(layer.hessian.double(), H, rtol=1e-5, atol=1e-6)


def test_bytes_without_filename_is_refused() -> None:
    with pytest.raises(LayerFileError, match="filename"):
        list_layers(b"\x00" * 16)


@pytest.mark.parametrize("shape, flat, note", [
    ((6, 2, 3, 3), (6, 18), "(O, I, kh, kw)"),
    ((6, 4, 5), (6, 20), "(O, I, k)"),
])
def test_conv_weights_are_flattened_with_a_note(tmp_path: Path, shape, flat, note) -> None:
    _, H = _psd(flat[1])
    path = tmp_path / "conv.safetensors"
    W = torch.randn(shape)
    save_file({"conv.weight": W, "conv.hessian": H.float()}, str(path))
    assert list_layers(path)[0].weight_shape == flat
    layer = load_layer(path)
    assert layer.weight.shape == flat
    torch.testing.assert_close(layer.weight, W.reshape(flat))
    assert any("flattened" in n and note in n for n in layer.notes)


def test_round_off_asymmetry_is_symmetrised(tmp_path: Path) -> None:
    _, H = _psd(8)
    H = H.float()
    H[0, 1] += 1e-7
    path = tmp_path / "h.safetensors"
    save_file({"l.weight": _weight(2, 8), "l.hessian": H}, str(path))
    Hl = load_layer(path).hessian
    assert torch.equal(Hl, Hl.T)


def test_default_max_bytes_and_env_override(monkeypatch) -> None:
    assert DEFAULT_MAX_BYTES >= 64 * 2**20
    monkeypatch.setenv("OBSVIZ_MAX_UPLOAD_BYTES", "1234")
    assert layers_mod._max_bytes_from_env() == 1234
    monkeypatch.setenv("OBSVIZ_MAX_UPLOAD_BYTES", "lots")
    with pytest.warns(UserWarning, match="OBSVIZ_MAX_UPLOAD_BYTES"):
        assert layers_mod._max_bytes_from_env() == 512 * 2**20


# ---- bad files: one clear message each --------------------------------------------------------


@pytest.mark.parametrize("name", ["layer.h5", "layer.txt", "layer", "layer.npy"])
def test_unknown_format(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"whatever")
    with pytest.raises(LayerFileError, match=r"unknown format.*\.safetensors, \.npz, \.pt, \.pth"):
        list_layers(path)
    with pytest.raises(LayerFileError, match="unknown format"):
        load_layer(b"whatever", filename=name)


def test_no_2d_weight(tmp_path: Path) -> None:
    _, H = _psd(8)
    path = tmp_path / "vec.safetensors"
    save_file({"l.weight": torch.randn(8), "l.hessian": H.float()}, str(path))
    with pytest.raises(LayerFileError, match=r"vec.safetensors, layer 'l': no 2-D weight.*\(8,\)"):
        list_layers(path)
    path = tmp_path / "h_only.safetensors"
    save_file({"l.hessian": H.float()}, str(path))
    with pytest.raises(LayerFileError, match="'l.hessian' but no 2-D weight"):
        load_layer(path)


def test_no_layer_at_all(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save({"fc.weight": _weight(3, 4), "fc.bias": torch.zeros(3)}, path)
    with pytest.raises(LayerFileError, match=r"no layer found.*fc.weight \(3, 4\)"):
        list_layers(path)


@pytest.mark.parametrize("hshape", [(9, 9), (8, 9)])
def test_hessian_shape_mismatch(tmp_path: Path, hshape) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **{"l.weight": np.ones((4, 8), np.float32),
                      "l.hessian": np.eye(*hshape, dtype=np.float32)})
    msg = (rf"bad.npz, layer 'l': Hessian 'l.hessian' has shape {re.escape(str(hshape))}"
           r".*must be \(K, K\) = \(8, 8\)")
    with pytest.raises(LayerFileError, match=msg):
        list_layers(path)
    with pytest.raises(LayerFileError, match="must be"):
        load_layer(path)


def test_inputs_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    save_file({"l.weight": torch.ones(4, 8), "l.inputs": torch.ones(10, 7)}, str(path))
    with pytest.raises(LayerFileError, match=r"inputs 'l.inputs' have shape \(10, 7\).*\(N, 8\)"):
        load_layer(path)


@pytest.mark.parametrize("key, bad, what", [
    ("l.weight", float("nan"), "1 NaN, 0 inf"),
    ("l.hessian", float("inf"), "0 NaN, 2 inf"),
    ("l.inputs", float("nan"), "1 NaN"),
])
def test_non_finite_values(tmp_path: Path, key: str, bad: float, what: str) -> None:
    X, H = _psd(8)
    t = {"l.weight": _weight(4, 8), "l.hessian": H.float()} if key != "l.inputs" else {
        "l.weight": _weight(4, 8), "l.inputs": X.float()}
    t[key] = t[key].clone()
    t[key][1, 2] = bad
    if key == "l.hessian":
        t[key][2, 1] = bad
    path = tmp_path / "nf.safetensors"
    save_file(t, str(path))
    with pytest.raises(LayerFileError, match=rf"layer 'l': '{key}' has non-finite values \({what}"):
        load_layer(path)


def test_unsymmetric_or_negative_hessian(tmp_path: Path) -> None:
    _, H = _psd(8)
    path = tmp_path / "h.safetensors"
    bad = H.float().clone()
    bad[0, 5] += 10.0
    save_file({"l.weight": _weight(2, 8), "l.hessian": bad}, str(path))
    with pytest.raises(LayerFileError, match="not symmetric"):
        load_layer(path)
    save_file({"l.weight": _weight(2, 8), "l.hessian": -torch.eye(8)}, str(path))
    with pytest.raises(LayerFileError, match="negative diagonal"):
        load_layer(path)


def _touch(path: str) -> None:
    """Side effect a malicious pickle would trigger on load."""
    Path(path).write_text("pwned")


class _Payload:
    """Unpickling this calls ``_touch(marker)``: arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def test_pickle_with_custom_objects_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"l.weight": _weight(2, 8), "l.hessian": torch.eye(8),
                "payload": _Payload(marker)}, path)
    # the file really is dangerous: a plain unpickle runs the payload
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()

    for call in (lambda: list_layers(path), lambda: load_layer(path),
                 lambda: load_layer(path.read_bytes(), filename="evil.pth")):
        with pytest.raises(LayerFileError, match=r"weights_only=True\) refused it.*_touch"):
            call()
        assert not marker.exists()


def test_plain_pickle_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"x": _Payload(marker)}))
    with pytest.raises(LayerFileError, match="refused|not a readable torch file"):
        list_layers(path)
    assert not marker.exists()


def test_npz_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, **{"l.weight": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(LayerFileError, match="object arrays.*never unpickles"):
        list_layers(path)


def test_oversize_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    # not even a valid file: the size limit must answer first
    path = tmp_path / "huge.safetensors"
    path.write_bytes(b"\xff" * 5000)
    with pytest.raises(LayerFileError, match=r"huge.safetensors: file is 5000 bytes, over the "
                                             r"limit of 4096 bytes.*OBSVIZ_MAX_UPLOAD_BYTES"):
        list_layers(path, max_bytes=4096)
    with pytest.raises(LayerFileError, match="over the limit"):
        load_layer(path.read_bytes(), max_bytes=4096, filename="huge.safetensors")
    with pytest.raises(LayerFileError, match="not a readable safetensors"):
        list_layers(path)  # under the default limit it gets parsed, and fails as garbage


def test_compressed_archive_is_limited_by_its_unpacked_size(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, **{"l.weight": np.zeros((4, 8)), "l.inputs": np.zeros((20000, 8))})
    assert path.stat().st_size < 100_000
    with pytest.raises(LayerFileError, match="unpacks to"):
        list_layers(path, max_bytes=200_000)


def test_corrupt_files(tmp_path: Path) -> None:
    for name in ("c.safetensors", "c.npz", "c.pt"):
        (tmp_path / name).write_bytes(b"\x01\x02 not a real file")
        with pytest.raises(LayerFileError, match=f"{name}: not a readable"):
            list_layers(tmp_path / name)
    with pytest.raises(LayerFileError, match="no such file"):
        list_layers(tmp_path / "missing.safetensors")


def test_unknown_layer_name_lists_the_valid_ones(tmp_path: Path) -> None:
    _, H = _psd(8)
    path = tmp_path / "one.safetensors"
    save_layers(path, [Layer("only", _weight(2, 8), H.float(), 1, "", [])])
    with pytest.raises(LayerFileError, match="no layer named 'other'; its layers are: only"):
        load_layer(path, "other")


# ---- size of what a small file makes the loader build ----------------------------------------


def test_inputs_with_a_huge_k_are_refused_from_their_shape(tmp_path: Path, monkeypatch) -> None:
    # ~2.4 MB on disk, but H = XᵀX / N would be 400k × 400k float64 (1.2 TB)
    K = 400_000
    path = tmp_path / "wide.safetensors"
    save_file({"wide.weight": torch.zeros(1, K), "wide.inputs": torch.zeros(1, K).half()},
              str(path))

    def never(*args, **kwargs):
        raise AssertionError("the Hessian must be refused before it is allocated")

    monkeypatch.setattr(layers_mod, "HessianAccumulator", never)
    pattern = (r"wide.safetensors, layer 'wide': the Hessian built from inputs 'wide.inputs' is "
               rf"\(K, K\) with K = {K}, .* over the limit of 512.0 MiB")
    with pytest.raises(LayerFileError, match=pattern):
        list_layers(path)
    with pytest.raises(LayerFileError, match=pattern):
        load_layer(path.read_bytes(), filename="wide.safetensors")


def test_hessian_over_the_limit_is_refused_from_its_shape(tmp_path: Path) -> None:
    _, H = _psd(64)
    path = tmp_path / "h.safetensors"
    save_file({"weight": _weight(2, 64), "hessian": H.half()}, str(path))  # 8 KiB of H on disk
    assert path.stat().st_size < 12_000
    with pytest.raises(LayerFileError, match=r"layer 'h': Hessian 'hessian' is \(K, K\) with "
                                             r"K = 64, 16384 bytes as float32, over the limit "
                                             r"of 12000 bytes"):
        load_layer(path, max_bytes=12_000)
    assert load_layer(path, max_bytes=20_000).hessian.shape == (64, 64)


def test_deeply_nested_torch_file_is_refused(tmp_path: Path) -> None:
    _, H = _psd(8)
    deep: object = [1.0]
    for _ in range(40):
        deep = [deep]
    path = tmp_path / "deep.pt"
    torch.save({"l.weight": _weight(2, 8), "l.hessian": H.float(), "junk": deep}, path)
    with pytest.raises(LayerFileError, match="deep.pt: containers nested more than 16 deep"):
        list_layers(path)


def test_flattening_never_recurses() -> None:
    # far deeper than Python's recursion limit: refused, not a RecursionError
    deep: object = [1.0]
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(LayerFileError, match="nested more than 16 deep"):
        layers_mod._flatten_container({"junk": deep}, "x.pt")


def test_torch_file_with_many_python_numbers_is_refused(tmp_path: Path) -> None:
    _, H = _psd(8)
    path = tmp_path / "ints.pt"
    torch.save({"l.weight": _weight(2, 8), "l.hessian": H.float(), "ids": list(range(20_000))},
               path)
    with pytest.raises(LayerFileError, match="ints.pt: holds more than 10,000 container entries"):
        list_layers(path)
    # numbers other than nsamples are skipped, not turned into tensors
    torch.save({"l.weight": _weight(2, 8), "l.hessian": H.float(), "l.nsamples": 64,
                "ids": list(range(100))}, path)
    assert list_layers(path) == [LayerInfo("l", (2, 8), "hessian (8, 8)")]
    assert load_layer(path).nsamples == 64
