"""One writer for "a pruned layer": the CLI and the app both write it, ``obsviz.load_layer`` reads
it back.

The file is a layer file (see :mod:`obsviz.layers`) in ``.safetensors``::

    <name>.weight    (M, K)  float32  the pruned, compensated weight
    <name>.mask      (M, K)  uint8    1 = kept, 0 = pruned
    <name>.hessian   (K, K)  float32  H = XᵀX / N the layer was pruned with (when known)
    <name>.nsamples  (1,)    int64    the N behind H (when known)

and in the file's metadata the layer's source and notes (as ``save_layers`` writes them) plus, under
``obsviz.report``, the run's report (JSON: method, geometry, nnz, options, rel_error, …).
``load_layer(path)`` returns the weight, the mask and the Hessian; ``load_report(path)`` the report.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from obsviz.errors import ArgumentError

#: safetensors metadata key of the run report (the layer metadata lives under "obsviz").
REPORT_KEY = "obsviz.report"
#: metadata key of the layer order, sources and notes (the same as obsviz.layers writes).
LAYER_META_KEY = "obsviz"


def pruned_tensors(weight: torch.Tensor, mask: torch.Tensor, hessian: torch.Tensor | None = None,
                   name: str = "layer", nsamples: int | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a pruned layer file, checked: ``{"<name>.weight": …, "<name>.mask": …}``."""
    if not isinstance(name, str) or not name or name.split(".")[-1] in (
            "weight", "mask", "hessian", "inputs", "nsamples"):
        raise ArgumentError("name", f"name={name!r} must be a non-empty layer name that does not "
                            "end in a role (weight, mask, hessian, inputs, nsamples)")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ArgumentError("weight", "weight must be a 2-D (M, K) tensor")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(weight.shape):
        raise ArgumentError("mask", f"mask must be a tensor of the weight's shape "
                            f"{tuple(weight.shape)}")
    K = weight.shape[1]
    # clone: safetensors refuses tensors that share memory
    tensors = {f"{name}.weight": weight.detach().to(torch.float32).cpu().contiguous().clone(),
               f"{name}.mask": mask.detach().cpu().bool().to(torch.uint8).contiguous().clone()}
    if hessian is not None:
        if not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (K, K):
            raise ArgumentError("hessian", f"hessian must be a (K, K) = ({K}, {K}) tensor")
        tensors[f"{name}.hessian"] = hessian.detach().to(torch.float32).cpu().contiguous().clone()
        if nsamples:
            tensors[f"{name}.nsamples"] = torch.tensor([int(nsamples)], dtype=torch.int64)
    return tensors


def save_pruned(path_or_buffer: str | os.PathLike | io.BufferedIOBase | None,
                result: Any, mask: torch.Tensor | None = None,
                hessian: torch.Tensor | None = None, name: str = "layer",
                report: dict | None = None, nsamples: int | None = None,
                source: str | None = None, notes: list[str] | None = None) -> bytes:
    """Write a pruned layer as ``.safetensors``; returns the file's bytes.

    Args:
        path_or_buffer: a ``.safetensors`` path, a writable binary buffer, or ``None`` (only
            return the bytes, e.g. for a download button).
        result: a :class:`obsviz.PruneResult` (its ``weight`` and ``mask``) or a weight tensor
            ``(M, K)``.
        mask: ``(M, K)`` bool, True = kept; required when ``result`` is a tensor.
        hessian: ``(K, K)`` the Hessian the layer was pruned with, when known.
        name: the layer's name in the file (``load_layer(path, name)``).
        report: JSON-able run report (``obsviz.metrics.summarize``); ``load_report`` reads it.
        nsamples: the N behind ``hessian``.
        source, notes: what the layer is, as ``load_layer`` reports them.
    """
    from safetensors.torch import save

    weight = getattr(result, "weight", result)
    if mask is None:
        mask = getattr(result, "mask", None)
    if mask is None:
        raise ArgumentError("mask", "mask is required when result is a weight tensor")
    tensors = pruned_tensors(weight, mask, hessian, name, nsamples)
    layer_meta = {"layers": [name], "source": {name: source} if source else {},
                  "notes": {name: [str(n) for n in notes]} if notes else {}}
    meta = {LAYER_META_KEY: json.dumps(layer_meta, ensure_ascii=False)}
    if report is not None:
        meta[REPORT_KEY] = json.dumps(report, default=str, ensure_ascii=False)
    data = save(tensors, metadata=meta)
    if path_or_buffer is None:
        return data
    if hasattr(path_or_buffer, "write"):
        path_or_buffer.write(data)
        return data
    path = Path(path_or_buffer)
    if path.suffix.lower() != ".safetensors":
        raise ArgumentError("path", f"path={str(path)!r}: a pruned layer is written as "
                            ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def load_report(path_or_bytes: str | os.PathLike | bytes, filename: str | None = None
                ) -> dict | None:
    """The run report ``save_pruned`` stored, or ``None`` when the file has none (or it is not
    JSON). Reads the header only; raw bytes are taken as ``.safetensors``."""
    from obsviz.layers import read_metadata

    if isinstance(path_or_bytes, bytes | bytearray | memoryview) and filename is None:
        filename = "pruned.safetensors"
    raw = read_metadata(path_or_bytes, filename=filename).get(REPORT_KEY)
    try:
        report = json.loads(raw) if raw else None
    except ValueError:
        return None
    return report if isinstance(report, dict) else None
