"""Whole-model what-if: prune every target Linear of a real model in sequence and measure what it
does to the model (no Streamlit).

The pipeline follows SparseGPT's ``opt.py``: the calibration text is run through the model block by
block (a block = one element of the model's ``ModuleList`` of transformer layers: BERT's
``encoder.layer``, GPT-2's ``transformer.h``, LLaMA's ``model.layers``). The first block's inputs
(and the extra arguments the model passes its blocks: attention mask, position ids/embeddings) are
caught with a pre-hook that raises to stop the forward pass. Then, for each block:

1. its target Linears are taken in the order they run, in *groups* that read the very same input
   tensor (query/key/value; gate/up) and therefore share one ``H = XᵀX / N``;
2. for each group, the block is run on the calibration inputs with a hook accumulating that H from
   the inputs the pruned-so-far model feeds it, every member is pruned with :func:`obsviz.prune`
   and its weight written back;
3. the block is run once more with its pruned weights; its outputs feed the next block.

``hessians="dense"`` takes every H from the dense model instead (each block's inputs come from the
dense block before it): the layers become independent, as when each is pruned on its own.

End metrics come from held-out text: for encoders the mean cosine similarity of dense and pruned
sentence embeddings (mean pooling under the attention mask, as sentence-transformers does) and the
relative error of the last hidden state; for causal LMs the perplexity of both. Each block's drift
is the relative error of its output, pruned vs dense model, on the same held-out text.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from obsviz import methods
from obsviz.calibrate import (
    _linear_modules,
    _model_name,
    calibration_sequences,
    load_checkpoint,
)
from obsviz.errors import ArgumentError
from obsviz.estimate import format_bytes, require_memory
from obsviz.geometry import Geometry
from obsviz.hessian import HessianAccumulator, check_damp, is_thin, thin_text
from obsviz.layers import SAMPLE_DIR
from obsviz.prune import prune, resolve_device

__all__ = [
    "CALIBRATION_TEXT", "HELD_OUT_TEXT", "HESSIANS", "KINDS", "LayerPlan", "LayerReport",
    "MAX_EVAL_TOKENS", "MAX_TOKENS", "ModelRun", "Override", "Plan", "PrunedModel",
    "calibration_samples", "calibration_table", "checkpoint_zip", "eval_texts", "find_blocks",
    "check_report", "estimate_text", "finished_methods", "kept_summary", "load_model",
    "plan_summary", "plan_time_estimate", "resolve_plan", "run_methods", "RunClock",
]

#: The shipped texts: calibration (the Jargon File excerpt) and held-out evaluation (The Devil's
#: Dictionary, A-E): two different public-domain books (sample_data/README.md).
CALIBRATION_TEXT = SAMPLE_DIR / "jargon_file_4.4.7_excerpt.txt"
HELD_OUT_TEXT = SAMPLE_DIR / "devils_dictionary_1911_a-e.txt"

#: Text tokens a model run calibrates on (``max_tokens``) and evaluates on (``max_eval_tokens``)
#: unless told otherwise: the one default of :class:`ModelRun`, ``obsviz model``/``sensitivity``
#: and the Model and Sensitivity pages. 2048 calibration tokens (with the special tokens, N = 2082
#: positions at 128 per sequence) exceed every input width of all-MiniLM-L6-v2 (K ≤ 1536), so no
#: layer's H is thin; the measured runs of docs/BENCHMARKS.md use them.
MAX_TOKENS = 2048
MAX_EVAL_TOKENS = 2048

ENCODER, CAUSAL = "encoder", "causal"
KINDS = (ENCODER, CAUSAL)
HESSIANS = ("sequential", "dense")
Progress = Callable[[float, str], None]
GeometrySpec = str | dict | Callable[[tuple[int, int]], Geometry]

#: Options ``obsviz.prune`` takes besides W, H, geometry, nnz and method.
_RUN_OPTIONS = ("device", "progress", "rows")


# ---- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    """Settings for the target Linears whose name matches ``pattern`` (``fnmatch``, e.g.
    ``"*.intermediate.dense"``, ``"*mlp*"``); a field left ``None`` keeps the plan's.
    ``skip=True`` leaves the matching layers dense."""

    pattern: str
    geometry: GeometrySpec | None = None
    nnz: int | None = None
    method: str | None = None
    options: dict | None = None
    skip: bool = False


@dataclass(frozen=True)
class Plan:
    """What to do to every target Linear (an ``nn.Linear`` or GPT-2 ``Conv1D`` inside a
    transformer block; never embeddings, heads or poolers).

    - ``geometry``: a preset name or ``"N:M"`` (built for each layer's shape), a free-form spec
      ``{"block": …, "scope": …, "view_shape": …, "view_stride": …}`` (``-1`` = the whole
      dimension; a spec without a view works on every shape), or a callable ``(M, K) -> Geometry``.
    - ``nnz``: blocks kept per scope (``None``: the preset's own).
    - ``method`` and ``options``: passed to :func:`obsviz.prune` (``damp``, ``ng``, …).
    - ``include`` / ``exclude``: name patterns (``fnmatch``) choosing the targets.
    - ``overrides``: per-pattern changes, applied in order (the last match wins per field).
    """

    geometry: GeometrySpec = "2:4"
    nnz: int | None = None
    method: str = "sparsegpt"
    options: dict = field(default_factory=dict)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    overrides: tuple[Override, ...] = ()

    def with_method(self, method: str) -> Plan:
        return replace(self, method=method)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        """The plan :meth:`describe` wrote (read back from a report or the run database:
        checked field by field; a callable geometry comes back as its name, which no layer
        fits)."""
        if not isinstance(data, dict):
            raise ArgumentError("plan", "a plan must be a JSON object")

        def strs(key: str, default: tuple) -> tuple[str, ...]:
            v = data.get(key, list(default))
            if not isinstance(v, list) or not all(isinstance(p, str) for p in v):
                raise ArgumentError("plan", f"plan[{key!r}] must be a list of name patterns")
            return tuple(v)

        def geo(v):
            if v is not None and not isinstance(v, str | dict):
                raise ArgumentError("plan", f"geometry {v!r} must be a preset name or a spec")
            return v

        def opt_int(v, where: str):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ArgumentError("plan", f"{where} must be an integer")
            return v

        overrides = []
        raw = data.get("overrides", [])
        if not isinstance(raw, list) or len(raw) > _MAX_LAYERS:
            raise ArgumentError("plan", "plan['overrides'] must be a list")
        for o in raw:
            if not isinstance(o, dict) or not isinstance(o.get("pattern"), str):
                raise ArgumentError("plan", "every override needs a 'pattern'")
            options = o.get("options")
            if options is not None and not isinstance(options, dict):
                raise ArgumentError("plan", "an override's options must be a JSON object")
            method = o.get("method")
            if method is not None and not isinstance(method, str):
                raise ArgumentError("plan", "an override's method must be a name")
            overrides.append(Override(o["pattern"], geo(o.get("geometry")),
                                      opt_int(o.get("nnz"), "an override's nnz"), method,
                                      options, bool(o.get("skip", False))))
        method, options = data.get("method", "sparsegpt"), data.get("options", {})
        if not isinstance(method, str) or not isinstance(options, dict):
            raise ArgumentError("plan", "plan['method'] must be a name, plan['options'] an "
                                "object")
        return cls(geo(data.get("geometry", "2:4")), opt_int(data.get("nnz"), "plan['nnz']"),
                   method, dict(options), strs("include", ("*",)), strs("exclude", ()),
                   tuple(overrides))

    def describe(self) -> dict:
        """Plain data for reports (a callable geometry is described by its name)."""
        def geo(g):
            return g if isinstance(g, str | dict) else getattr(g, "__name__", "custom")
        return {"geometry": geo(self.geometry), "nnz": self.nnz, "method": self.method,
                "options": dict(self.options), "include": list(self.include),
                "exclude": list(self.exclude),
                "overrides": [{"pattern": o.pattern, "geometry": geo(o.geometry), "nnz": o.nnz,
                               "method": o.method, "options": o.options, "skip": o.skip}
                              for o in self.overrides]}


@dataclass
class LayerPlan:
    """One target Linear, resolved: where it is, its geometry, budget, method and options."""

    name: str            # module name in the model, e.g. "encoder.layer.0.attention.self.query"
    block: int
    local: str           # module name inside its block, e.g. "attention.self.query"
    shape: tuple[int, int]   # (M, K) of W as obsviz sees it (Conv1D weights are transposed)
    geometry: Geometry
    nnz: int
    method: str
    options: dict


@dataclass
class LayerReport:
    name: str
    block: int
    shape: tuple[int, int]
    geometry: str
    nnz: int
    method: str
    rel_error: float     # the layer's own ‖X ΔWᵀ‖ / ‖X W0ᵀ‖ under the H it was pruned with
    sparsity: float
    seconds: float
    nsamples: int

    def to_dict(self) -> dict:
        return {"name": self.name, "block": self.block, "shape": list(self.shape),
                "geometry": self.geometry, "nnz": self.nnz, "method": self.method,
                "rel_error": self.rel_error, "sparsity": self.sparsity, "seconds": self.seconds,
                "nsamples": self.nsamples}


def _build_geometry(spec: GeometrySpec, shape: tuple[int, int]) -> Geometry:
    if callable(spec) and not isinstance(spec, str | dict):
        geom = spec(shape)
        if not isinstance(geom, Geometry):
            raise ArgumentError("geometry", "a geometry callable must return an obsviz.Geometry")
        return geom
    if isinstance(spec, str):
        return Geometry.preset(spec, shape)
    if isinstance(spec, dict):
        unknown = set(spec) - {"block", "scope", "view_shape", "view_stride", "name", "nnz"}
        if unknown:
            raise ArgumentError("geometry", f"geometry spec has unknown keys {sorted(unknown)}; "
                                "valid: block, scope, view_shape, view_stride, name, nnz")
        if "block" not in spec or "scope" not in spec:
            raise ArgumentError("geometry", "a free-form geometry needs 'block' and 'scope'")
        return Geometry(shape, spec["block"], spec["scope"], spec.get("view_shape"),
                        spec.get("view_stride"), name=spec.get("name"), nnz=spec.get("nnz"))
    raise ArgumentError("geometry", f"geometry={spec!r}: give a preset name, 'N:M', a free-form "
                        "spec dict or a callable (M, K) -> Geometry")


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _check_options(method: str, options: dict, where: str) -> None:
    """The method exists and every option is valid (the registry's checks, up front)."""
    try:
        methods.get(method)
        opts = dict(options)
        if "damp" in opts:
            check_damp(opts.pop("damp"))
        bad = [k for k in opts if k in _RUN_OPTIONS]
        if bad:
            raise ArgumentError("options", f"options {bad} are set by the model run itself")
        methods.resolve_options(method, **opts)
    except ArgumentError as err:
        raise ArgumentError(err.argument, f"{where}{err}") from None
    except ValueError as err:
        raise ArgumentError("damp", f"{where}{err}") from None


def resolve_plan(model: nn.Module, plan: Plan) -> list[LayerPlan]:
    """Every target Linear of ``model`` with its geometry, nnz, method and options, in model
    order. Checks everything up front: a geometry that does not fit a layer, a bad nnz or an
    unknown method raise one :class:`ArgumentError` that names every layer concerned."""
    if not isinstance(plan, Plan):
        raise ArgumentError("plan", "plan must be an obsviz.model.Plan")
    prefix, blocks = find_blocks(model)
    _check_options(plan.method, plan.options, "")
    for o in plan.overrides:
        if o.method is not None or o.options:
            _check_options(o.method or plan.method, o.options or {}, f"override {o.pattern!r}: ")
    out, problems, names = [], [], []
    for b, block in enumerate(blocks):
        for local, mod in _linear_modules(block).items():
            name = f"{prefix}.{b}.{local}" if prefix else f"{b}.{local}"
            names.append(name)
            if not _matches(name, plan.include) or _matches(name, plan.exclude):
                continue
            geometry, nnz, method, options, skip = (plan.geometry, plan.nnz, plan.method,
                                                    dict(plan.options), False)
            for o in plan.overrides:
                if fnmatch.fnmatchcase(name, o.pattern):
                    geometry = o.geometry if o.geometry is not None else geometry
                    nnz = o.nnz if o.nnz is not None else nnz
                    method = o.method or method
                    options.update(o.options or {})
                    skip = o.skip
            if skip:
                continue
            shape = _shape_of(mod)
            try:
                geom = _build_geometry(geometry, shape)
                k = geom.nnz if nnz is None else nnz
                if k is None:
                    raise ArgumentError("nnz", "a free-form geometry needs nnz")
                geom.check_nnz(k)
            except ValueError as err:
                problems.append(f"{name} {shape[0]} × {shape[1]}: {err}")
                continue
            out.append(LayerPlan(name, b, local, shape, geom, int(k), method, options))
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ArgumentError("geometry", f"the plan does not fit {len(problems)} layer(s){more}: "
                            + "; ".join(problems[:5]))
    if not out:
        like = (f": the model's {len(names)} are named like {', '.join(names[:2])} … "
                f"{names[-1]} (patterns are shell-style, e.g. '{names[0].rsplit('.', 1)[0]}.*' "
                "or '*.0.*')" if names else "")
        raise ArgumentError("include", "the plan selects no Linear layer of the model's blocks; "
                            f"check include/exclude patterns{like}")
    return out


# ---- the model --------------------------------------------------------------------------------


def calibration_samples(tokenizer, text: str, max_tokens: int | None = MAX_TOKENS,
                        seq_len: int = 128) -> int:
    """N of a model run, known before it: the token positions (special tokens included) every
    layer's ``H = XᵀX / N`` is built from (:attr:`ModelRun.n_calibration_tokens` once made)."""
    return sum(len(s) for s in calibration_sequences(tokenizer, text, max_tokens, seq_len))


def calibration_table(layers: Sequence[LayerPlan], nsamples: int) -> list[dict]:
    """Per layer of a plan, before the run: its name, K (``in_features``), the N its H is built
    from and ``thin`` (``obsviz.hessian.is_thin``: N < K)."""
    return [{"layer": lp.name, "K": lp.shape[1], "N": int(nsamples),
             "thin": is_thin(nsamples, lp.shape[1])} for lp in layers]


def thin_warning(layers: Sequence[LayerPlan], nsamples: int) -> str | None:
    """One warning for the layers of a plan whose H would be thin (N < K), or ``None``: the
    wording of :func:`obsviz.hessian.thin_text`, with the layers named."""
    thin = [lp for lp in layers if is_thin(nsamples, lp.shape[1])]
    if not thin:
        return None
    widest = max(lp.shape[1] for lp in thin)
    names = ", ".join(lp.name for lp in thin[:6]) + (", …" if len(thin) > 6 else "")
    return f"{len(thin)} of {len(layers)} layers ({names}): " + thin_text(nsamples, widest)


def _shape_of(mod: nn.Module) -> tuple[int, int]:
    W = mod.weight
    M, K = W.shape if isinstance(mod, nn.Linear) else W.shape[::-1]  # Conv1D keeps (K, M)
    return int(M), int(K)


def _get_weight(mod: nn.Module) -> torch.Tensor:
    W = mod.weight.detach()
    return (W if isinstance(mod, nn.Linear) else W.T).to(torch.float32).contiguous().clone()


def _set_weight(mod: nn.Module, W: torch.Tensor) -> None:
    with torch.no_grad():
        mod.weight.copy_(W if isinstance(mod, nn.Linear) else W.T)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(name, blocks)``: the model's list of transformer blocks — the largest ``ModuleList``
    of same-type modules that hold Linear layers (BERT ``encoder.layer``, GPT-2 ``transformer.h``,
    LLaMA ``model.layers``)."""
    best, best_size = None, 0
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(m) for m in mod}) != 1 or not _linear_modules(mod[0]):
            continue
        size = sum(p.numel() for p in mod.parameters())
        if size > best_size:
            best, best_size = (name, mod), size
    if best is None:
        raise ArgumentError("model", "found no list of transformer blocks in this model (a "
                            "ModuleList of identical layers holding Linear layers)")
    return best


def model_kind(model: nn.Module) -> str:
    """``"causal"`` for a language model with an LM head (``…ForCausalLM``, ``…LMHeadModel``),
    else ``"encoder"``."""
    name = type(model).__name__
    return CAUSAL if name.endswith(("ForCausalLM", "LMHeadModel")) else ENCODER


def load_model(model_dir: str | os.PathLike) -> tuple[nn.Module, object]:
    """``(model, tokenizer)`` from a local Hugging Face-format directory (never the hub; weights
    only from ``.safetensors``, never unpickled), float32, eval mode, checked first as
    :func:`obsviz.calibrate.load_checkpoint` does (memory from the config, readable weights,
    every tensor of the model present, a working tokenizer). Causal LMs load with their LM head
    (``AutoModelForCausalLM``), anything else as the bare encoder (``AutoModel``)."""
    return load_checkpoint(model_dir, lm_head=True, safetensors_only=True)


# ---- calibration and evaluation data ----------------------------------------------------------


def eval_texts(text: str, max_chars: int = 2000, min_chars: int = 40) -> list[str]:
    """The held-out text as the sentences to embed: each paragraph (blank-line separated,
    whitespace collapsed) cut after ``.``, ``!`` or ``?`` before a capital; pieces shorter than
    ``min_chars`` join the next one (so ``"ABASEMENT, n."`` stays with its definition); each
    sentence at most ``max_chars``."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        pieces = re.split(r"(?<=[.!?])\s+(?=[A-Z_\"'(])", para)
        merged: list[str] = []
        carry = ""
        for piece in pieces:
            carry = f"{carry} {piece}" if carry else piece
            if len(carry) >= min_chars:
                merged.append(carry)
                carry = ""
        if carry:
            if merged:
                merged[-1] = f"{merged[-1]} {carry}"
            else:
                merged.append(carry)
        out.extend(m[:max_chars] for m in merged)
    return out


def _id_batches(seqs: list[list[int]], batch_size: int, device) -> list[torch.Tensor]:
    """Equal-length sequences batched together (no padding ever), in order."""
    out = []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        for length in sorted({len(s) for s in chunk}, reverse=True):
            out.append(torch.tensor([s for s in chunk if len(s) == length], device=device))
    return out


# ---- the run ----------------------------------------------------------------------------------


@dataclass
class PrunedModel:
    """A pruned copy of the dense model, with what happened to each layer."""

    model: nn.Module
    plan: Plan
    hessians: str
    layers: list[LayerReport]
    seconds: float
    stopped: bool = False
    cpu_seconds: float = 0.0   # CPU time of this process (all threads): steadier than wall time
                               # on a shared machine


class _Catch(Exception):
    pass


class ModelRun:
    """A dense model with its tokenizer, calibration batches and held-out evaluation data; it
    prunes copies with :meth:`prune`, measures them with :meth:`evaluate`, writes them with
    :meth:`save`. The dense model is never modified.

    ``max_tokens`` caps the calibration text tokens, ``max_eval_tokens`` the held-out tokens.
    """

    def __init__(self, model: nn.Module, tokenizer, calibration_text: str, eval_text: str, *,
                 seq_len: int = 128, max_tokens: int | None = MAX_TOKENS,
                 max_eval_tokens: int | None = MAX_EVAL_TOKENS, batch_size: int = 8,
                 device: str | torch.device | None = "cpu", name: str = "model") -> None:
        if not isinstance(model, nn.Module):
            raise ArgumentError("model", "model must be a torch.nn.Module")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ArgumentError("batch_size", f"batch_size={batch_size!r} must be a positive "
                                "integer")
        max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if max_pos is None:
            max_pos = getattr(getattr(model, "config", None), "n_positions", None)
        if isinstance(max_pos, int) and seq_len > max_pos:
            raise ArgumentError("seq_len", f"seq_len={seq_len}: this model takes at most "
                                f"{max_pos} positions")
        self.device = resolve_device(device)
        self.name = name
        self.kind = model_kind(model)
        self.dense = model.to(self.device).float().eval()
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.block_name, self.blocks = find_blocks(self.dense)
        self._dense_cache: list[dict] | None = None
        try:
            seqs = calibration_sequences(tokenizer, calibration_text, max_tokens, seq_len)
        except ValueError as e:
            raise ArgumentError("calibration", f"calibration text: {e}") from None
        self.calibration = _id_batches(seqs, batch_size, self.device)
        self.n_calibration_tokens = sum(b.numel() for b in self.calibration)
        self.eval_batches = self._eval_batches(eval_text, max_eval_tokens)
        self.n_eval_tokens = int(sum(int(m.sum()) for _, m in self.eval_batches))
        self.eval_units = sum(int(ids.shape[0]) for ids, _ in self.eval_batches)
        if self.n_eval_tokens == 0:
            raise ArgumentError("eval", "the held-out text gives no tokens to evaluate on")

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike, calibration_text: str, eval_text: str,
                 **kwargs) -> ModelRun:
        resolve_device(kwargs.get("device", "cpu"))   # a bad device is said before loading
        model, tokenizer = load_model(model_dir)
        kwargs.setdefault("name", _model_name(Path(model_dir)))
        return cls(model, tokenizer, calibration_text, eval_text, **kwargs)

    # -- data

    def _eval_batches(self, text: str, max_tokens: int | None
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(input_ids, attention_mask)]``: for encoders the held-out sentences, padded per
        batch; for causal LMs back-to-back windows of ``seq_len`` tokens (no padding)."""
        if not text.strip():
            raise ArgumentError("eval", "the held-out text is empty")
        if self.kind == CAUSAL:
            seqs = calibration_sequences(self.tokenizer, text, max_tokens, self.seq_len)
            seqs = [s for s in seqs if len(s) >= 2]
            return [(b, torch.ones_like(b)) for b in _id_batches(seqs, self.batch_size,
                                                                  self.device)]
        texts, total, chosen = eval_texts(text), 0, []
        for t in texts:
            n = len(self.tokenizer(t, truncation=True, max_length=self.seq_len)["input_ids"])
            if max_tokens is not None and total + n > max_tokens and chosen:
                break
            chosen.append((n, t))
            total += n
        # similar lengths share a batch (little padding); every metric is a sum or a mean
        chosen = [t for _, t in sorted(chosen, key=lambda nt: nt[0])]
        out = []
        for i in range(0, len(chosen), self.batch_size):
            enc = self.tokenizer(chosen[i:i + self.batch_size], padding=True, truncation=True,
                                 max_length=self.seq_len, return_tensors="pt")
            out.append((enc["input_ids"].to(self.device),
                        enc["attention_mask"].to(self.device)))
        return out

    def _forward(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor):
        if self.kind == CAUSAL:
            return model(input_ids=ids, attention_mask=mask, use_cache=False)
        return model(input_ids=ids, attention_mask=mask)

    def _block_inputs(self) -> list[tuple[torch.Tensor, tuple, dict]]:
        """The first block's inputs for every calibration batch, with the extra arguments the
        model passes its blocks, caught by a pre-hook that stops the forward pass."""
        caught = []

        def catch(mod, args, kwargs):
            caught.append((args[0] if args else kwargs.pop("hidden_states"), args[1:], kwargs))
            raise _Catch

        handle = self.blocks[0].register_forward_pre_hook(catch, with_kwargs=True)
        try:
            with torch.no_grad():
                for ids in self.calibration:
                    try:
                        self._forward(self.dense, ids, torch.ones_like(ids))
                    except _Catch:
                        pass
        finally:
            handle.remove()
        if len(caught) != len(self.calibration):
            raise ArgumentError("model", "the first block never ran on the calibration text")
        return [(h, args, {k: v for k, v in kw.items() if k != "hidden_states"})
                for h, args, kw in caught]

    # -- estimates

    def memory_needed(self, plan: Plan, layers: list[LayerPlan] | None = None) -> dict:
        """Bytes the run will hold at its peak, by part: the dense model and its pruned copy, one
        block's inputs and outputs for the whole calibration set, one forward batch's
        intermediates, one H (float64), the largest layer's pruning work and the dense model's
        block outputs on the held-out text."""
        layers = layers if layers is not None else resolve_plan(self.dense, plan)
        params = sum(p.numel() * p.element_size() for p in self.dense.parameters())
        cfg = getattr(self.dense, "config", None)
        hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or max(
            lp.shape[1] for lp in layers)
        ffn = (getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None)
               or 4 * hidden)
        heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or 1
        longest = max(int(b.shape[1]) for b in self.calibration)
        batch_tokens = max(b.numel() for b in self.calibration)
        activations = 2 * self.n_calibration_tokens * hidden * 4
        forward = 4 * (batch_tokens * (ffn + 6 * hidden)
                       + self.batch_size * heads * longest * longest * 2)
        K = max(lp.shape[1] for lp in layers)
        hessian = 8 * K * K
        work = max(methods.get(lp.method).memory(
            lp.geometry, device=self.device,
            **{k: v for k, v in lp.options.items() if k != "damp"}) for lp in layers)
        eval_tokens = sum(ids.numel() for ids, _ in self.eval_batches)
        evaluation = (len(self.blocks) + 1) * eval_tokens * hidden * 4
        parts = {"models": 2 * params, "activations": activations, "forward": forward,
                 "hessian": hessian, "pruning": work, "evaluation": evaluation}
        parts["total"] = sum(parts.values())
        return parts

    def check_memory(self, plan: Plan, layers: list[LayerPlan] | None = None) -> dict:
        """:meth:`memory_needed`, or an :class:`ArgumentError` (``"memory"``) when it exceeds
        what is free on the device."""
        need = self.memory_needed(plan, layers)
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in need.items() if k != "total")
        require_memory(need["total"], self.device, what=f"this model run ({parts})",
                       argument="memory")
        return need

    # -- pruning

    def prune(self, plan: Plan, *, hessians: str = "sequential",
              progress: Progress | None = None, stop: Callable[[], bool] | None = None,
              on_layer: Callable[[LayerPlan, torch.Tensor, object], None] | None = None,
              on_report: Callable[[LayerReport], None] | None = None,
              weights: dict[str, float] | None = None) -> PrunedModel:
        """Prune a copy of the dense model by ``plan``.

        ``hessians``: ``"sequential"`` (H from the pruned-so-far model, as SparseGPT) or
        ``"dense"`` (H from the dense model; layers independent). ``progress(fraction, message)``
        as each layer starts (the message names the layer being pruned), while it is pruned and
        after it; the fraction weighs each layer by ``weights`` (layer name -> estimated seconds,
        :func:`plan_time_estimate`; default: all alike). ``stop()`` is asked before each layer
        and ends the run there (``stopped=True``, the layers done so far pruned).
        ``on_report(layer_report)`` is called as each layer finishes (what a caller keeps when
        the run is interrupted). ``on_layer(layer_plan, H, result)`` sees
        every layer's H (float64) and :class:`obsviz.PruneResult` (for tests and inspection).
        """
        if hessians not in HESSIANS:
            raise ArgumentError("hessians", f"hessians={hessians!r}; valid: "
                                f"{', '.join(HESSIANS)}")
        layers = resolve_plan(self.dense, plan)
        self.check_memory(plan, layers)
        report = progress or (lambda f, m: None)
        t0, c0 = time.perf_counter(), time.process_time()
        work = copy.deepcopy(self.dense)
        _, work_blocks = find_blocks(work)
        by_block: dict[int, list[LayerPlan]] = {}
        for lp in layers:
            by_block.setdefault(lp.block, []).append(lp)
        done: list[LayerReport] = []
        cost = {lp.name: max(float((weights or {}).get(lp.name, 1.0)), 1e-9) for lp in layers}
        total_cost, cost_done = sum(cost.values()), 0.0
        stopped = False
        report(0.0, f"catching the first block's inputs ({len(self.calibration)} batches)")
        inputs = self._block_inputs()
        hs = [h for h, _, _ in inputs]
        extras = [(a, kw) for _, a, kw in inputs]
        for b in range(len(self.blocks)):
            targets = by_block.get(b, [])
            wblock = work_blocks[b]
            # sequential: H from the pruned-so-far block; dense: from the dense block
            source = wblock if hessians == "sequential" else self.blocks[b]
            groups = _input_groups(source, [lp.local for lp in targets], hs[0], extras[0])
            plans = {lp.local: lp for lp in targets}
            for group in groups:
                if stop is not None and stop():
                    stopped = True
                    break
                report(cost_done / total_cost, f"pruning {plans[group[0]].name} "
                       f"(layer {len(done) + 1} of {len(layers)}): its H")
                acc = self._group_hessian(source, group[0], hs, extras)
                H = acc.result(torch.float64)
                wmods = dict(wblock.named_modules())
                for local in group:
                    if stop is not None and stop():
                        stopped = True
                        break
                    lp = plans[local]
                    mod = wmods[local]
                    W = _get_weight(mod)
                    now = f"pruning {lp.name} (layer {len(done) + 1} of {len(layers)})"

                    def inner(f, msg, now=now, start=cost_done, size=cost[lp.name]):
                        report((start + min(max(f, 0.0), 1.0) * size) / total_cost, now)

                    inner(0.0, "")
                    res = prune(W, H, lp.geometry, lp.nnz, method=lp.method,
                                device=self.device, progress=inner, **lp.options)
                    _set_weight(mod, res.weight.to(W.dtype))
                    if on_layer is not None:
                        on_layer(lp, H, res)
                    done.append(LayerReport(
                        lp.name, b, lp.shape, lp.geometry.name or lp.geometry.describe(), lp.nnz,
                        lp.method, float(res.rel_error), 1.0 - float(res.mask.float().mean()),
                        float(res.seconds), acc.nsamples))
                    if on_report is not None:
                        on_report(done[-1])
                    cost_done += cost[lp.name]
                    report(cost_done / total_cost,
                           f"{lp.name} done (layer {len(done)} of {len(layers)}): relative "
                           f"error {res.rel_error:.4f}")
                if stopped:
                    break
            if stopped:
                break
            # the next block's inputs: this block's outputs (pruned, or dense)
            hs = _run_block(wblock if hessians == "sequential" else self.blocks[b], hs, extras)
        return PrunedModel(work.eval(), plan, hessians, done, time.perf_counter() - t0, stopped,
                           time.process_time() - c0)

    def _group_hessian(self, block: nn.Module, local: str, hs: list[torch.Tensor],
                       extras: list) -> HessianAccumulator:
        """``H = XᵀX / N`` of the inputs ``block``'s Linear ``local`` reads, over every
        calibration batch (the pass stops at that Linear: the rest of the block is not needed)."""
        mod = dict(block.named_modules())[local]
        acc = HessianAccumulator(_shape_of(mod)[1], device=self.device)
        handle = mod.register_forward_pre_hook(_catch_into(acc))
        try:
            for h, extra in zip(hs, extras, strict=True):
                try:
                    _call_block(block, h, extra)
                except _Catch:
                    pass
        finally:
            handle.remove()
        return acc

    def dense_hessians(self, layers: list[LayerPlan], stop: Callable[[], bool] | None = None):
        """``(group, H, nsamples)`` for every group of ``layers`` (those of one block reading one
        input), in model order: H (float64) from the dense model, as ``hessians="dense"``
        prunes with. One pass of the calibration text through the dense blocks; nothing is
        pruned. Ends early when ``stop()`` turns true (asked before each group)."""
        by_block: dict[int, list[LayerPlan]] = {}
        for lp in layers:
            by_block.setdefault(lp.block, []).append(lp)
        inputs = self._block_inputs()
        hs = [h for h, _, _ in inputs]
        extras = [(a, kw) for _, a, kw in inputs]
        last = max(by_block)
        for b in range(last + 1):
            block, targets = self.blocks[b], by_block.get(b, [])
            plans = {lp.local: lp for lp in targets}
            for group in _input_groups(block, list(plans), hs[0], extras[0]) if targets else []:
                if stop is not None and stop():
                    return
                acc = self._group_hessian(block, group[0], hs, extras)
                yield [plans[n] for n in group], acc.result(torch.float64), acc.nsamples
            if b < last:
                hs = _run_block(block, hs, extras)

    def to(self, device: str | torch.device) -> ModelRun:
        """This run moved to ``device`` (the dense model, the calibration and held-out batches,
        the dense model's held-out outputs): what a Ray task on a GPU does with a run it got
        from the object store. Returns ``self``."""
        device = resolve_device(device)
        if device == self.device:
            return self
        self.device = device
        self.dense = self.dense.to(device)
        self.block_name, self.blocks = find_blocks(self.dense)
        self.calibration = [b.to(device) for b in self.calibration]
        self.eval_batches = [(i.to(device), m.to(device)) for i, m in self.eval_batches]
        if self._dense_cache is not None:
            self._dense_cache = [{k: ([t.to(device) for t in v] if k == "blocks" else
                                      v.to(device) if isinstance(v, torch.Tensor) else v)
                                  for k, v in d.items()} for d in self._dense_cache]
        return self

    # -- evaluation

    @torch.no_grad()
    def _outputs(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        """One held-out batch through ``model``: every block's output, and the last hidden
        state (encoders) or the summed next-token NLL (causal LMs)."""
        _, blocks = find_blocks(model)
        outs: list = [None] * len(blocks)
        handles = [blk.register_forward_hook(_keep_output(outs, i))
                   for i, blk in enumerate(blocks)]
        try:
            out = self._forward(model, ids, mask)
        finally:
            for h in handles:
                h.remove()
        got = {"blocks": outs}
        if self.kind == ENCODER:
            got["last"] = out.last_hidden_state
        else:
            got["nll"], got["n"] = token_nll(out.logits, ids)
        return got

    def _dense_outputs(self) -> list[dict]:
        """The dense model's held-out outputs, computed once (every method is compared with
        them)."""
        if self._dense_cache is None:
            self._dense_cache = [self._outputs(self.dense, ids, mask)
                                 for ids, mask in self.eval_batches]
        return self._dense_cache

    @torch.no_grad()
    def evaluate(self, pruned: nn.Module) -> dict:
        """End metrics of ``pruned`` against the dense model on the held-out text, and each
        block's drift (relative error of its output, pruned vs dense model, over every real
        token).

        Encoders: ``cosine`` (mean over the held-out sentences of the cosine similarity of the
        mean-pooled sentence embeddings) and ``last_hidden_rel_error``. Causal LMs:
        ``perplexity`` and ``dense_perplexity`` (``exp`` of the mean next-token NLL)."""
        nb = len(self.blocks)
        num, den = [0.0] * nb, [0.0] * nb
        cos_sum, n_units = 0.0, 0
        h_num = h_den = 0.0
        nll_p = nll_d = 0.0
        n_pred = 0
        for (ids, mask), dense in zip(self.eval_batches, self._dense_outputs(), strict=True):
            got = self._outputs(pruned, ids, mask)
            m = mask.to(torch.float64).unsqueeze(-1)
            for i in range(nb):
                d, p = dense["blocks"][i].to(torch.float64), got["blocks"][i].to(torch.float64)
                num[i] += float((((p - d) ** 2) * m).sum())
                den[i] += float(((d ** 2) * m).sum())
            if self.kind == ENCODER:
                hd, hp = dense["last"].to(torch.float64), got["last"].to(torch.float64)
                h_num += float((((hp - hd) ** 2) * m).sum())
                h_den += float(((hd ** 2) * m).sum())
                ed, ep = mean_pool(hd, mask), mean_pool(hp, mask)
                cos_sum += float(torch.nn.functional.cosine_similarity(ed, ep, dim=-1).sum())
                n_units += int(ids.shape[0])
            else:
                nll_d += dense["nll"]
                nll_p += got["nll"]
                n_pred += got["n"]
        drift = [math.sqrt(n / d) if d > 0 else 0.0 for n, d in zip(num, den, strict=True)]
        if self.kind == ENCODER:
            metrics = {"cosine": cos_sum / n_units,
                       "last_hidden_rel_error": math.sqrt(h_num / h_den) if h_den > 0 else 0.0}
        else:
            metrics = {"perplexity": perplexity(nll_p, n_pred),
                       "dense_perplexity": perplexity(nll_d, n_pred)}
        return {"metrics": metrics, "drift": drift}

    # -- saving

    def save(self, pruned: PrunedModel | nn.Module, out_dir: str | os.PathLike) -> Path:
        """Write a pruned model as a Hugging Face-format folder (config, ``model.safetensors``,
        tokenizer files) that ``transformers`` loads as it is."""
        model = pruned.model if isinstance(pruned, PrunedModel) else pruned
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(out)
        return out

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "blocks": len(self.blocks),
                "block_list": self.block_name,
                "parameters": sum(p.numel() for p in self.dense.parameters()),
                "device": self.device.type,
                "calibration": {"batches": len(self.calibration),
                                "sequences": sum(int(b.shape[0]) for b in self.calibration),
                                "tokens": self.n_calibration_tokens, "seq_len": self.seq_len},
                "evaluation": {"units": self.eval_units, "tokens": self.n_eval_tokens,
                               "unit": "sentence" if self.kind == ENCODER else "window"}}


def _catch_into(acc: HessianAccumulator):
    def fn(mod, args):
        acc.add(args[0].detach())
        raise _Catch
    return fn


def _keep_output(store: list, i: int):
    def fn(mod, args, output):
        store[i] = (output[0] if isinstance(output, tuple) else output).detach()
    return fn


@torch.no_grad()
def _call_block(block: nn.Module, h: torch.Tensor, extra: tuple[tuple, dict]) -> torch.Tensor:
    args, kwargs = extra
    out = block(h, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _run_block(block: nn.Module, hs: list[torch.Tensor], extras: list) -> list[torch.Tensor]:
    return [_call_block(block, h, e) for h, e in zip(hs, extras, strict=True)]


@torch.no_grad()
def _input_groups(block: nn.Module, names: list[str], h: torch.Tensor, extra) -> list[list[str]]:
    """The target Linears of a block in the order they run, grouped by the input tensor they
    read (Linears fed the very same tensor share one H). Learned from one probe forward."""
    mods = dict(block.named_modules())
    seen: list[tuple[str, torch.Tensor]] = []   # the inputs stay referenced: no id reuse
    handles = []
    for n in names:
        def fn(mod, args, n=n):
            seen.append((n, args[0]))
        handles.append(mods[n].register_forward_pre_hook(fn))
    try:
        _call_block(block, h, extra)
    finally:
        for hd in handles:
            hd.remove()
    groups: list[list[str]] = []
    placed: set[str] = set()
    last = None
    for n, x in seen:
        if n in placed:
            continue
        placed.add(n)
        if groups and x is last:   # the same tensor as the group's: the same H
            groups[-1].append(n)
        else:
            groups.append([n])
            last = x
    never = [n for n in names if n not in placed]
    if never:
        raise ArgumentError("include", f"layers {never} never run in their block's forward "
                            "pass; exclude them")
    return groups


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers' mean pooling: the average of the token
    vectors under the attention mask. ``hidden (B, T, D)``, ``mask (B, T)`` -> ``(B, D)``."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """``(sum of -log p(next token), number of predictions)`` of a causal LM's logits on
    unpadded windows ``ids (B, T)``: position t predicts token t+1."""
    lp = torch.log_softmax(logits[:, :-1].to(torch.float64), dim=-1)
    target = ids[:, 1:]
    nll = -lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return float(nll.sum()), int(target.numel())


def perplexity(nll: float, n: int) -> float:
    """``exp`` of the mean next-token NLL; ``inf`` when that passes what a float holds (a mean
    NLL over 709.78: a model that gives the text almost no chance is reported as such)."""
    try:
        return math.exp(nll / n)
    except OverflowError:
        return math.inf


# ---- several methods, one report ----------------------------------------------------------------


def plan_time_estimate(model: nn.Module | ModelRun, plan: Plan, methods: Sequence[str],
                       device: str | torch.device | None = None) -> dict[str, dict]:
    """Seconds each method is estimated to take on this model before it runs:
    :func:`obsviz.estimate.time_estimate` on every layer of ``plan`` (its geometry, its method,
    the device), summed per method. ``model``: a :class:`ModelRun` (its dense model and device)
    or the dense model itself (then ``device``, default the CPU). Returns ``{method: {"seconds":
    total, "layers": {layer name: seconds}}}``. It counts the pruning, not the forward passes
    that gather each H and measure the model (seconds on MiniLM)."""
    from obsviz.estimate import time_estimate

    if isinstance(model, ModelRun):
        model, device = model.dense, model.device if device is None else device
    device = resolve_device(device or "cpu")
    out = {}
    for m in dict.fromkeys(methods):
        layers = {lp.name: time_estimate(lp.geometry, lp.method, device=device,
                                         n_splits=lp.options.get("n_splits", 4))
                  for lp in resolve_plan(model, plan.with_method(m))}
        out[m] = {"seconds": sum(layers.values()), "layers": layers}
    return out


def estimate_text(estimate: dict[str, dict]) -> str:
    """:func:`plan_time_estimate` in one line: ``"magnitude 0.4 s, sparsegpt 15 s (pruning
    only; each H and the end metrics take their forward passes besides)"``."""
    from obsviz.estimate import format_seconds

    return (", ".join(f"{m} {format_seconds(e['seconds'])}" for m, e in estimate.items())
            + " (pruning only; the forward passes for each H and the end metrics come on top)")


class RunClock:
    """The time so far and the time left of a run of several methods, one after the other:
    from the estimate made before it (:func:`plan_time_estimate`), corrected by the pace so far
    once some of the work is done. ``due`` thins progress out to a few updates a second (and
    every new message)."""

    def __init__(self, estimate: dict[str, dict], every_s: float = 0.25) -> None:
        self.seconds = {m: max(float(e["seconds"]), 1e-9) for m, e in estimate.items()}
        self.total = sum(self.seconds.values())
        self.start = time.perf_counter()
        self.every_s = every_s
        self._last: tuple[float, str] = (-math.inf, "")

    def fraction(self, method: str, f: float) -> float:
        """The part of the whole run done when ``method`` is at ``f`` of its own work."""
        before = 0.0
        for m, s in self.seconds.items():
            if m == method:
                break
            before += s
        return min(1.0, (before + min(max(f, 0.0), 1.0) * self.seconds[method]) / self.total)

    def text(self, method: str, f: float) -> str:
        """``"12 s so far · about 40 s left"``."""
        from obsviz.estimate import eta_text, format_seconds

        elapsed = time.perf_counter() - self.start
        return (f"{format_seconds(elapsed)} so far · "
                f"{eta_text(elapsed, self.fraction(method, f), self.total)}")

    def due(self, f: float, message: str) -> bool:
        now = time.perf_counter()
        if message != self._last[1] or now - self._last[0] >= self.every_s or f >= 1.0:
            self._last = (now, message)
            return True
        return False


def _new_entry(method: str, planned: int) -> dict:
    """A method's entry before its first layer finishes: ``stopped`` until it has its end
    metrics (what is kept if the run is interrupted there)."""
    return {"method": method, "seconds": 0.0, "cpu_seconds": 0.0, "stopped": True, "layers": [],
            "layers_planned": planned, "sparsity": 0.0}


def _method_entry(run: ModelRun, plan: Plan, method: str, hessians: str,
                  progress: Progress | None = None, stop: Callable[[], bool] | None = None,
                  entry: dict | None = None, weights: dict[str, float] | None = None
                  ) -> tuple[dict, PrunedModel]:
    """One method of :func:`run_methods`: the model pruned by ``plan`` with ``method`` and, unless
    stopped, evaluated. ``(entry, pruned model)``. ``entry``: the dict to fill, in place as
    each layer finishes: until the method has its end metrics it is marked ``stopped`` (what is
    kept when the run is interrupted there), with ``layers_planned``."""
    if entry is None:
        entry = _new_entry(method, len(resolve_plan(run.dense, plan.with_method(method))))
    done: list[LayerReport] = []
    t0, c0 = time.perf_counter(), time.process_time()

    def finished(lr: LayerReport) -> None:   # each layer enters the entry as it finishes
        done.append(lr)
        entry["layers"].append(lr.to_dict())
        entry.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
                     sparsity=_overall_sparsity(done))

    pm = run.prune(plan.with_method(method), hessians=hessians, progress=progress, stop=stop,
                   on_report=finished, weights=weights)
    entry.update(seconds=pm.seconds, cpu_seconds=pm.cpu_seconds)   # layers: filled as they came
    if not pm.stopped:
        if progress is not None:
            progress(1.0, "measuring the pruned model on the held-out text")
        entry.update(run.evaluate(pm.model))
        entry["stopped"] = False
    return entry, pm


def _method_task():
    import ray

    @ray.remote
    def method_task(run: ModelRun, plan: Plan, method: str, hessians: str, device: str,
                    weights: bool) -> dict:
        run.to(device)
        entry, pm = _method_entry(run, plan, method, hessians)
        mods = dict(pm.model.named_modules())
        pruned = ({lr["name"]: mods[lr["name"]].weight.detach().cpu() for lr in entry["layers"]}
                  if weights else None)
        return {"status": "done", "entry": entry, "weights": pruned}

    return method_task


def _ray_methods(run: ModelRun, plan: Plan, methods: list[str], hessians: str, finish,
                 stop: Callable[[], bool] | None, address: str | None, max_retries: int,
                 weights: bool) -> tuple[bool, dict]:
    """The methods of :func:`run_methods` as Ray tasks (``obsviz.sweep.ray_each``); ``finish(m,
    entry, weights)`` as each ends. Returns ``(stopped, failed)`` (failed: method -> message)."""
    from obsviz.sweep import _ray, _ray_device, ray_each, ray_slots

    ray = _ray(address)
    device = run.device.type if run.device.type == "cuda" else _ray_device(ray, None)
    gpus = 1 if device == "cuda" else 0
    task = _method_task().options(num_cpus=1, num_gpus=gpus, max_retries=max_retries,
                                  retry_exceptions=False)
    run._dense_outputs()
    run_ref = ray.put(run)
    failed: dict[str, str] = {}

    def on_out(m: str, got: dict) -> None:
        if got["status"] == "done":
            finish(m, got["entry"], got["weights"])
        else:
            failed[m] = str(got["error"])[:2000]

    stopped = ray_each(ray, task, methods,
                       lambda m: (run_ref, plan, m, hessians, device, weights), on_out,
                       stop or (lambda: False), ray_slots(ray, gpus))
    return stopped, failed


def run_methods(run: ModelRun, plan: Plan, methods: Sequence[str], *,
                hessians: str = "sequential", out_dir: str | os.PathLike | None = None,
                progress: Progress | None = None, stop: Callable[[], bool] | None = None,
                on_method: Callable[[str, dict], None] | None = None,
                into: dict | None = None, executor: str = "local",
                address: str | None = None, max_retries: int = 3) -> dict:
    """Prune the model once per method (each from the dense model), evaluate each against the
    dense model and return the JSON-ready report; with ``out_dir``, each pruned model is written
    to ``out_dir/<method>/`` and the report to ``out_dir/report.json``. ``into``: a dict filled
    in place as methods finish (what a caller keeps if the run is interrupted).

    ``executor="ray"``: one Ray task per method (``address`` of a cluster, else Ray locally; one
    GPU per task on CUDA; a task whose worker dies is retried ``max_retries`` times); methods
    enter the report as they finish (then in the order asked), ``on_method`` is called for each;
    a method whose task fails is left out, its message in ``report["failed"]``."""

    from obsviz.sweep import EXECUTORS

    if executor not in EXECUTORS:
        raise ArgumentError("executor", f"executor={executor!r} is unknown; valid: "
                            f"{', '.join(EXECUTORS)}")
    if executor == "local" and address is not None:
        raise ArgumentError("address", "address= is for executor='ray'")
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ArgumentError("methods", "choose at least one method")
    for m in methods:
        _check_options(m, plan.options, "")
    layer_plans = {m: resolve_plan(run.dense, plan.with_method(m)) for m in methods}
    for m in methods:
        run.check_memory(plan.with_method(m), layer_plans[m])
    estimate = plan_time_estimate(run, plan, methods)
    report = into if into is not None else {}
    report.update({"model": run.describe(), "plan": plan.describe(), "hessians": hessians,
                   "methods": {}, "stopped": False,
                   "estimate": {m: e["seconds"] for m, e in estimate.items()}})
    try:
        _run_methods(run, plan, methods, hessians, out_dir, progress, stop, on_method, report,
                     estimate, executor, address, max_retries)
    except BaseException:   # an interrupt (Ctrl-C, a Stop click): what finished stays in report
        report["stopped"] = True
        raise
    return report


def _run_methods(run, plan, methods, hessians, out_dir, progress, stop, on_method, report,
                 estimate, executor, address, max_retries) -> None:
    """:func:`run_methods` once its arguments are checked, filling ``report``."""
    import json

    if run.kind == CAUSAL:
        report["dense"] = {"perplexity": run.evaluate(run.dense)["metrics"]["dense_perplexity"]}
    else:
        report["dense"] = {"cosine": 1.0, "last_hidden_rel_error": 0.0}
    say = progress or (lambda f, msg: None)

    def finish(m: str, entry: dict, pruned) -> None:
        if out_dir is not None:
            entry["path"] = m
            if isinstance(pruned, PrunedModel | nn.Module):
                run.save(pruned, Path(out_dir) / m)
            else:   # a Ray task's pruned weights, written into a copy of the dense model
                model = copy.deepcopy(run.dense)
                mods = dict(model.named_modules())
                with torch.no_grad():
                    for name, W in pruned.items():
                        mods[name].weight.copy_(W)
                run.save(model, Path(out_dir) / m)
                del model
        report["methods"][m] = entry
        if on_method is not None:
            on_method(m, entry)

    if executor == "local":
        clock = RunClock(estimate)
        for i, m in enumerate(methods):
            def sub(f, msg, i=i, m=m):
                if clock.due(f, msg):
                    say(clock.fraction(m, f), f"{m} ({i + 1} of {len(methods)}): {msg} · "
                                              f"{clock.text(m, f)}")
            # in the report from the start, filled as its layers finish (kept if interrupted)
            report["methods"][m] = _new_entry(m, len(estimate[m]["layers"]))
            entry, pm = _method_entry(run, plan, m, hessians, sub, stop, report["methods"][m],
                                      estimate[m]["layers"])
            if pm.stopped:
                report["stopped"] = True
                break
            finish(m, entry, pm)
            del pm
    else:
        say(0.0, f"{len(methods)} method(s) on Ray")
        stopped, failed = _ray_methods(
            run, plan, methods, hessians,
            lambda m, e, w: (finish(m, e, w), say(len(report["methods"]) / len(methods),
                                                  f"{m}: done")),
            stop, address, max_retries, out_dir is not None)
        report["stopped"] = bool(stopped)
        report["methods"] = {m: report["methods"][m] for m in methods if m in report["methods"]}
        if failed:
            report["failed"] = failed
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=2))


def _overall_sparsity(layers: list[LayerReport]) -> float:
    total = sum(lr.shape[0] * lr.shape[1] for lr in layers)
    return sum(lr.sparsity * lr.shape[0] * lr.shape[1] for lr in layers) / total if total else 0.0


# ---- reports read back --------------------------------------------------------------------------

#: Most layers per method, and characters per name, a report read back may hold.
_MAX_LAYERS = 100_000
_MAX_NAME = 1000


def _bad(where: str, what: str) -> ArgumentError:
    return ArgumentError("report", f"report{where}: {what}")


def _is_number(v: object) -> bool:
    """A JSON number a view can format: a float, or an int that fits one (``1`` followed by
    400 zeros parses as an int that ``f"{v:.2f}"`` cannot show)."""
    return isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool)
                                    and abs(v) <= 2**1023)


def _need(d: dict, key: str, kind: str, where: str):
    """``d[key]`` checked to be a ``kind``: "dict", "list", "str", "int" or "number"."""
    if key not in d:
        raise _bad(where, f"{key!r} is missing")
    v = d[key]
    ok = {"dict": isinstance(v, dict), "list": isinstance(v, list),
          "str": isinstance(v, str) and len(v) <= _MAX_NAME,
          "int": isinstance(v, int) and not isinstance(v, bool) and v >= 0,
          "number": _is_number(v)}[kind]
    if not ok:
        raise _bad(f"{where}[{key!r}]", f"must be a {kind}" + (
            f" of at most {_MAX_NAME} characters" if kind == "str" else
            " ≥ 0" if kind == "int" else ""))
    return v


def check_report(report: object) -> dict:
    """A whole-model report read back (from the run database or a JSON file: hostile) checked
    against everything the views read: the model's description, the Hessian mode, the plan, the
    dense metrics, and per method (a name from :data:`obsviz.METHODS`) its seconds, sparsity,
    layers (name, block, shape, geometry, nnz, ``rel_error``, seconds), end metrics and drift.
    A method entry marked ``stopped`` may lack metrics. Returns ``report``; raises
    ``ArgumentError("report", …)`` naming the first bad field. Cost: one pass over it."""
    if not isinstance(report, dict):
        raise _bad("", "must be a JSON object")
    info = _need(report, "model", "dict", "")
    _need(info, "name", "str", "['model']")
    if _need(info, "kind", "str", "['model']") not in KINDS:
        raise _bad("['model']['kind']", f"must be one of {', '.join(KINDS)}")
    _need(info, "blocks", "int", "['model']")
    if "block_list" in info:
        _need(info, "block_list", "str", "['model']")
    _need(_need(info, "calibration", "dict", "['model']"), "tokens", "int",
          "['model']['calibration']")
    ev = _need(info, "evaluation", "dict", "['model']")
    for key, kind in (("tokens", "int"), ("units", "int"), ("unit", "str")):
        _need(ev, key, kind, "['model']['evaluation']")
    if _need(report, "hessians", "str", "") not in HESSIANS:
        raise _bad("['hessians']", f"must be one of {', '.join(HESSIANS)}")
    _need(report, "plan", "dict", "")
    dense = _need(report, "dense", "dict", "")
    if info["kind"] == CAUSAL:
        _need(dense, "perplexity", "number", "['dense']")
    entries = _need(report, "methods", "dict", "")
    for m, e in entries.items():
        where = f"['methods'][{m!r}]"
        if m not in methods.METHODS:
            raise _bad(where, f"{m[:_MAX_NAME]!r} is not a method of obsviz")
        if not isinstance(e, dict):
            raise _bad(where, "must be a JSON object")
        _need(e, "seconds", "number", where)
        _need(e, "sparsity", "number", where)
        layers = _need(e, "layers", "list", where)
        if len(layers) > _MAX_LAYERS:
            raise _bad(f"{where}['layers']", f"has more than {_MAX_LAYERS} layers")
        for i, lr in enumerate(layers):
            at = f"{where}['layers'][{i}]"
            if not isinstance(lr, dict):
                raise _bad(at, "must be a JSON object")
            for key, kind in (("name", "str"), ("block", "int"), ("geometry", "str"),
                              ("nnz", "int"), ("rel_error", "number"), ("seconds", "number")):
                _need(lr, key, kind, at)
            shape = _need(lr, "shape", "list", at)
            if len(shape) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                          for v in shape):
                raise _bad(f"{at}['shape']", "must be [M, K]")
        if e.get("stopped") and "metrics" not in e:
            continue
        metrics = _need(e, "metrics", "dict", where)
        for key in (("cosine", "last_hidden_rel_error") if info["kind"] == ENCODER
                    else ("perplexity",)):
            _need(metrics, key, "number", f"{where}['metrics']")
        drift = _need(e, "drift", "list", where)
        if len(drift) > _MAX_LAYERS or not all(_is_number(d) for d in drift):
            raise _bad(f"{where}['drift']", "must be a list of numbers")
    return report


def finished_methods(report: dict) -> list[str]:
    """The methods of a report that ran to the end (they have end metrics)."""
    return [m for m, e in report.get("methods", {}).items() if "metrics" in e]


def _errors_kept(n: int) -> str:
    return "its error is kept" if n == 1 else f"the {n} layers' errors are kept"


def kept_summary(report: dict, asked: Sequence[str] = (), how: str = "stopped") -> str:
    """What a run that did not finish keeps, in words, method by method: ``"stopped during
    sparsegpt after 7 of 36 layers: the 7 layers' errors are kept; no end metrics"``, the
    methods that finished (end metrics kept) and those of ``asked`` never started. ``how``:
    the word for the end (``"stopped"``, ``"failed"``)."""
    entries = report.get("methods", {}) if isinstance(report, dict) else {}
    finished = finished_methods(report) if entries else []
    parts = []
    if finished:
        parts.append(f"{', '.join(finished)} finished: {'its' if len(finished) == 1 else 'their'}"
                     " end metrics and per-layer errors are kept")
    for m, e in entries.items():
        if m in finished:
            continue
        n, of = len(e.get("layers", [])), e.get("layers_planned")
        of = of if isinstance(of, int) and not isinstance(of, bool) and of >= n else None
        if n == 0:
            parts.append(f"{how} during {m} before its first layer finished: nothing of {m} "
                         "is kept")
        elif n == of:
            parts.append(f"{how} during {m} after all {n} layer{'s' if n != 1 else ''}, while "
                         f"measuring the model: {_errors_kept(n)}; no end metrics")
        else:
            parts.append(f"{how} during {m} after {n}{f' of {of}' if of else ''} "
                         f"layer{'s' if (of or n) != 1 else ''}: {_errors_kept(n)}; no end "
                         "metrics")
    later = [m for m in asked if m not in entries]
    if later:
        parts.append(f"not started: {', '.join(later)}")
    return "; ".join(parts) if parts else f"{how} before any method started: nothing is kept"


def plan_summary(plan: dict) -> str:
    """One line for a plan (``Plan.describe()``, or one read back: anything unexpected is left
    out): ``"2:4 · nnz 2 · include *.layer.0.*"``."""
    geo = plan.get("geometry")
    if isinstance(geo, dict):
        geo = " ".join(f"{k} {v}" for k, v in geo.items())
    parts = [str(geo)]
    if plan.get("nnz") is not None:
        parts.append(f"nnz {plan['nnz']}")
    for key in ("include", "exclude"):
        pats = plan.get(key)
        if isinstance(pats, list) and pats and pats != ["*"]:
            parts.append(f"{key} {', '.join(map(str, pats))}")
    if isinstance(plan.get("overrides"), list) and plan["overrides"]:
        n = len(plan["overrides"])
        parts.append(f"{n} override{'s' if n > 1 else ''}")
    return " · ".join(parts)[:_MAX_NAME]


def checkpoint_zip(folder: str | os.PathLike) -> bytes:
    """A saved checkpoint folder as zip bytes (its files at the top level), for downloads."""
    import io
    import zipfile

    folder = Path(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                zf.write(f, arcname=f.name)
    return buf.getvalue()
