"""``python -m obsviz layers`` and ``python -m obsviz hessian``, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from obsviz.cli import build_parser, main
from obsviz.layers import SAMPLE_DIR, Layer, list_layers, load_layer, save_layers

ROOT = Path(__file__).resolve().parent.parent
TEXT_FILE = SAMPLE_DIR / "jargon_file_4.4.7_excerpt.txt"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "obsviz", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)




def test_help_names_the_subcommands(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "layers" in out and "hessian" in out


def test_layers_lists_the_sample_file() -> None:
    out = run_cli("layers", SAMPLE_DIR / "minilm_l6.safetensors")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["name", "weight", "(M,", "K)", "hessian"]
    assert lines[1].split() == ["layer0.query", "(384,", "384)", "hessian", "(384,", "384)"]
    assert any(ln.split()[:3] == ["layer0.mlp_down", "(384,", "1536)"] for ln in lines)


def test_layers_verbose_in_process(tmp_path: Path, capsys) -> None:
    X = torch.randn(30, 6)
    path = tmp_path / "mine.npz"
    np.savez(path, **{"fc.weight": np.ones((2, 6), np.float32), "fc.inputs": X.numpy()})
    assert main(["layers", "-v", str(path)]) == 0
    out = capsys.readouterr().out
    assert "inputs (30, 6)" in out and "N = 30" in out and "XᵀX" in out


def test_layers_bad_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "layer.h5"
    bad.write_bytes(b"x")
    out = run_cli("layers", bad)
    assert out.returncode == 1
    assert out.stderr.strip().startswith("obsviz: error: layer.h5: unknown format")
    assert "Traceback" not in out.stderr


def test_layers_max_bytes_option(tmp_path: Path, capsys) -> None:
    path = tmp_path / "one.safetensors"
    save_layers(path, [Layer("a", torch.ones(2, 4), torch.eye(4), 1, "", [])])
    assert main(["layers", "--max-bytes", "10", str(path)]) == 1
    assert "over the limit" in capsys.readouterr().err


def test_hessian_writes_a_layer_file_from_the_real_checkpoint(minilm: Path,
                                                             tmp_path: Path) -> None:
    text = tmp_path / "calib.txt"
    text.write_text(TEXT_FILE.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    out_file = tmp_path / "minilm.safetensors"
    q, up = "encoder.layer.2.attention.self.query", "encoder.layer.2.intermediate.dense"
    out = run_cli("hessian", minilm, text, "--layers", f"{q},{up}", "--max-tokens", "300",
                  "--out", out_file, "-q")
    assert out.returncode == 0, out.stderr
    assert f"wrote 2 layer(s) to {out_file}" in out.stdout
    assert [i.name for i in list_layers(out_file)] == [q, up]
    layer = load_layer(out_file, up)
    assert layer.weight.shape == (1536, 384) and layer.hessian.shape == (384, 384)
    assert layer.nsamples == 300 + 2 * 3  # three sequences of 128, [CLS] and [SEP] each
    assert torch.equal(layer.hessian, layer.hessian.T)
    assert any("calib.txt" in n for n in layer.notes)


def test_hessian_list_and_usage_errors(minilm: Path, tmp_path: Path, capsys) -> None:
    assert main(["hessian", str(minilm), "--list"]) == 0
    names = capsys.readouterr().out.split()
    assert len(names) == 37 and names[0] == "encoder.layer.0.attention.self.query"

    text = tmp_path / "t.txt"
    text.write_text("Some calibration text.", encoding="utf-8")
    assert main(["hessian", str(minilm), str(text), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "--layers" in capsys.readouterr().err
    assert main(["hessian", str(minilm), str(text), "--layers", "nope",
                 "--out", str(tmp_path / "o.safetensors")]) == 1
    assert "layers=['nope']" in capsys.readouterr().err
    assert main(["hessian", str(minilm), str(text), "--layers", "pooler.dense",
                 "--out", str(tmp_path / "o.npz")]) == 2
    assert ".safetensors" in capsys.readouterr().err


def test_parser_has_one_function_per_subcommand() -> None:
    parser = build_parser()
    assert parser.parse_args(["layers", "f.safetensors"]).func.__name__ == "cmd_layers"
    args = parser.parse_args(["hessian", "m", "t.txt", "--layers", "a", "b,c", "--out", "o"])
    assert args.func.__name__ == "cmd_hessian" and args.layers == ["a", "b,c"]


def test_prune_writes_the_pruned_layer_its_mask_and_a_report(tmp_path: Path) -> None:
    import json

    from safetensors.torch import load_file

    out = tmp_path / "toy.pruned.safetensors"
    done = run_cli("prune", SAMPLE_DIR / "toy.safetensors", "--preset", "2:4", "--method",
                   "true_obs", "--ng", "1", "--out", out, "-q")
    assert done.returncode == 0, done.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["valid"] and report["sparsity"] == 0.5 and report["method"] == "true_obs"
    tensors = load_file(str(out))
    mask = tensors["toy.mask"].bool()
    assert torch.all(tensors["toy.weight"][~mask] == 0)
    assert load_layer(out, "toy").weight.shape == (8, 16)


def test_prune_free_form_geometry_and_a_clear_error_for_a_bad_one(tmp_path: Path) -> None:
    ok = run_cli("prune", SAMPLE_DIR / "toy.safetensors", "--block", "2,2", "--scope", "1,2",
                 "--nnz", "1", "--method", "full", "--out", tmp_path / "t.safetensors", "-q")
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("prune", SAMPLE_DIR / "toy.safetensors", "--block", "1,3", "--scope", "1,2",
                  "--nnz", "1", "--out", tmp_path / "u.safetensors", "-q")
    assert bad.returncode == 1
    assert "block=(1, 3)" in bad.stderr and "Traceback" not in bad.stderr


def test_prune_warns_before_a_choice_that_prunes_nothing(tmp_path: Path) -> None:
    done = run_cli("prune", SAMPLE_DIR / "toy.safetensors", "--preset", "2:4", "--nnz", "4",
                   "--method", "magnitude", "--out", tmp_path / "t.safetensors", "-q")
    assert done.returncode == 0, done.stderr
    assert "warning: 4:4 keeps all 4 blocks of every scope: nothing is pruned" in done.stderr
    quiet = run_cli("prune", SAMPLE_DIR / "toy.safetensors", "--preset", "2:4", "--nnz", "1",
                    "--method", "magnitude", "--out", tmp_path / "u.safetensors", "-q")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr


def test_bench_prints_ratios_against_sparsegpt(tmp_path: Path) -> None:
    done = run_cli("bench", "--file", SAMPLE_DIR / "toy.safetensors", "--layers", "toy",
                   "--presets", "2:4", "--methods", "local", "sparsegpt",
                   "--out", tmp_path / "b.json")
    assert done.returncode == 0, done.stderr
    assert "| 2:4 | local |" in done.stdout and (tmp_path / "b.json").exists()
