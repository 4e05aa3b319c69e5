"""The run model: what a run prunes with (``Job``), one finished result (``Run``), the key that
names it (``run_key``), and the session's collection of finished runs (``store``/``add``).

Session-state key (see also ``ui.state``): ``results``: ``dict[str, Run]``, every finished result
of this session, oldest first, keyed by ``run_key`` (a digest of the layer's content, the
geometry, nnz, the method, its options and the row sample), so asking again for the same run is
instant.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import streamlit as st
import torch

from obsviz import Geometry, PruneResult
from obsviz.layout import row_sample
from obsviz.methods import OPTIONS, REGISTRY

from ui.layers import ActiveLayer

#: Methods each option applies to (options other methods ignore stay out of their cache key),
#: and every option's default: both read off the method registry (``obsviz.methods``).
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    name: m.option_names for name, m in REGISTRY.items() if m.options}
DEFAULT_OPTIONS = {name: option.default for name, option in OPTIONS.items()}
MAX_STORED = 32  # oldest results are dropped beyond this (each holds a pruned copy of W)


@dataclass(frozen=True)
class Job:
    """What a run prunes with, the same for every method of one Run click."""

    layer: ActiveLayer
    geometry: Geometry        # .nnz is ignored; ``nnz`` is the budget
    nnz: int
    damp: float = 0.01
    device: str = "cpu"
    options: dict = field(default_factory=lambda: dict(DEFAULT_OPTIONS))
    sample: tuple[str, int] | None = None   # ("first", N) or ("every", k); None = all rows

    def rows(self) -> torch.Tensor | None:
        if self.sample is None:
            return None
        how, n = self.sample
        return row_sample(self.geometry, **{how: n})

    def method_options(self, method: str) -> dict:
        return {k: self.options[k] for k in METHOD_OPTIONS.get(method, ())}


@dataclass
class Run:
    """One finished result and everything it was run on."""

    key: str
    job: Job
    method: str
    result: PruneResult       # tensors on the CPU
    report: dict              # obsviz.metrics.summarize(...)
    label: str = ""

    @property
    def layer(self) -> ActiveLayer:
        return self.job.layer


def run_key(job: Job, method: str) -> str:
    spec = {"layer": job.layer.digest, "geometry": job.geometry.key, "nnz": job.nnz,
            "method": method, "damp": job.damp, "device": job.device,
            "options": job.method_options(method), "sample": job.sample}
    return hashlib.blake2b(json.dumps(spec, sort_keys=True).encode(), digest_size=12).hexdigest()


def store() -> dict[str, Run]:
    return st.session_state.setdefault("results", {})


def add(run: Run) -> None:
    runs = store()
    runs.pop(run.key, None)
    runs[run.key] = run
    while len(runs) > MAX_STORED:
        runs.pop(next(iter(runs)))
