"""Command line: ``python -m obsviz SUBCOMMAND …`` (or the ``obsviz`` script).

    obsviz layers FILE                          list the layers of a layer file
    obsviz hessian MODEL_DIR TEXT --layers … --out FILE.safetensors
                                                Hessians of a local checkpoint's Linear layers
    obsviz prune …                              prune a layer file
    obsviz bench …                              time the modes

Each subcommand is one ``cmd_*`` function taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from obsviz.layers import DEFAULT_MAX_BYTES, LayerFileError, list_layers, load_layer, save_layers


def _print_err(msg: str) -> None:
    print(f"obsviz: error: {msg}", file=sys.stderr)


def cmd_layers(args: argparse.Namespace) -> int:
    """List every layer of a file: name, weight shape, where its Hessian comes from."""
    infos = list_layers(args.file, max_bytes=args.max_bytes)
    width = max(len("name"), *(len(i.name) for i in infos))
    print(f"{'name':{width}s}  {'weight (M, K)':14s}  hessian")
    for info in infos:
        M, K = info.weight_shape
        print(f"{info.name:{width}s}  {f'({M}, {K})':14s}  {info.hessian_source}")
    if args.verbose:
        for info in infos:
            layer = load_layer(args.file, info.name, max_bytes=args.max_bytes)
            print(f"\n{layer.name}: N = {layer.nsamples}, source: {layer.source}")
            for note in layer.notes:
                print(f"  note: {note}")
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

    if args.list:
        for name in linear_layer_names(args.model_dir):
            print(name)
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
    text_path = args.text
    if text_path is None or not text_path.is_file():
        _print_err(f"TEXT {text_path}: no such text file")
        return 2
    text = text_path.read_text(encoding="utf-8", errors="replace")

    def progress(frac: float, msg: str) -> None:
        if not args.quiet:
            print(f"\r{frac:6.1%}  {msg}", end="", file=sys.stderr, flush=True)

    layers = hessians_from_checkpoint(
        args.model_dir, text, names, max_tokens=args.max_tokens, seq_len=args.seq_len,
        progress=progress, batch_size=args.batch_size, device=args.device)
    if not args.quiet:
        print(file=sys.stderr)
    for layer in layers:
        layer.notes.append(f"calibration text: {text_path.name}")
    save_layers(args.out, layers)
    for layer in layers:
        M, K = layer.shape
        print(f"{layer.name}: weight ({M}, {K}), hessian ({K}, {K}), N = {layer.nsamples}")
    print(f"wrote {len(layers)} layer(s) to {args.out}")
    return 0


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
                    "only; needs the hf extra (pip install obsviz[hf]).")
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                   help="checkpoint folder (config.json, weights, tokenizer files)")
    p.add_argument("text", type=Path, nargs="?", metavar="TEXT",
                   help="calibration text file (UTF-8)")
    p.add_argument("--layers", nargs="+", metavar="NAME",
                   help="Linear layer names (space or comma separated), or 'all'")
    p.add_argument("--out", type=Path, metavar="FILE.safetensors", help="layer file to write")
    p.add_argument("--list", action="store_true", help="list the checkpoint's Linear layers")
    p.add_argument("--max-tokens", type=int, default=50_000,
                   help="text tokens to use at most (default %(default)s)")
    p.add_argument("--seq-len", type=int, default=128,
                   help="tokens per sequence, special tokens included (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    p.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_hessian)

    # ---- room for `prune` and `bench` --------------------------------------------------------
    # Each is added here as `p = sub.add_parser("prune", …)` with its options and
    # `p.set_defaults(func=cmd_prune)`, its `cmd_prune(args) -> int` defined above build_parser.
    # ------------------------------------------------------------------------------------------
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
