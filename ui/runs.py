"""The run model: what a run prunes with (``Job``), one finished result (``Run``), the key that
names it (``run_key``), and the session's collection of finished runs (``store``/``add``), kept
in the run database (``obsviz.store.RunStore`` at its default path) as well.

Session-state keys (declared in ``ui.state.KEYS``; this module owns them; ``ui.stored_runs``
lists the run store's runs in ``results``):

- ``results``: ``dict[str, Run]``, every finished result of this session (and the stored runs
  it asked for again), oldest first, keyed by ``run_key``. Nothing is ever dropped from it:
  beyond ``MAX_IN_MEMORY`` results, the oldest pruned weights leave memory and are read back
  from the run store when asked for (``Run.result``).

A run's trial (``Run.trial``, ``trial_of``) is the run store's trial key
(``obsviz.store.trial_key``: the layer's content, the geometry, nnz, the method, its options and
the device, damping, the row sample), so asking again for the same run, in this session or after
a restart, is instant. Its key in the session (``run_key``, ``named_key``) is the trial and the
name of the layer it was asked for on: two layers of equal contents and different names share one
computation (the second is "reused", ``reused_text``), and each name has its own entry, on
Compare as in the run store (``RunStore.layer_names``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import streamlit as st
import torch

from obsviz import Geometry, PruneResult, metrics
from obsviz.layout import row_sample
from obsviz.methods import OPTIONS, REGISTRY, resolve_options
from obsviz.store import RunStore, StoredRun, StoredTensorsError, default_store_path, trial_key

from ui.layers import ActiveLayer

#: Every method option at its default, by name (``obsviz.methods.OPTIONS``): one value per name
#: is shared by the methods that declare it.
DEFAULT_OPTIONS = {name: option.default for name, option in OPTIONS.items()}
#: Pruned weights (a copy of W each) kept in memory per session; older ones are read back from
#: the run store on demand.
MAX_IN_MEMORY = 8


@dataclass(frozen=True)
class Job:
    """What a run prunes with, the same for every method of one Run click."""

    layer: ActiveLayer
    geometry: Geometry        # read-only (shared); its own .nnz is ignored: ``nnz`` is the budget
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
        """The options ``method`` declares (``obsviz.methods``), checked, defaults filled."""
        return resolve_options(method, **{k: self.options.get(k)
                                          for k in REGISTRY[method].option_names})

    def trial_options(self, method: str) -> dict:
        """The options that decide the result: the method's own, the device (``auto`` C dtypes
        depend on it) and the row sample. As stored in the run database."""
        return {**self.method_options(method), "device": self.device,
                "sample": None if self.sample is None else list(self.sample)}


class Run:
    """One finished result and everything it was run on. ``result`` (the pruned weight and
    mask) is read back from the run store when it has left memory."""

    def __init__(self, key: str, job: Job, method: str, result: PruneResult | None,
                 report: dict | None, label: str = "", stored_id: int | None = None,
                 rel_error: float | None = None, trial: str | None = None) -> None:
        self.key, self.job, self.method = key, job, method
        self.trial = trial or trial_of(job, method)   # its run store key (the computation)
        #: the name of the layer of the same contents whose result this one reuses (``None``
        #: when it was run, or found, under its own layer's name)
        self.reused_from: str | None = None
        self.label = label            # display only (``ui.labels``); ``key`` identifies it
        self.stored_id = stored_id    # its row in the run store, when stored
        self._result, self._report = result, report
        self.rel_error = float(result.rel_error if rel_error is None else rel_error)
        self.seconds = 0.0 if result is None else float(result.seconds)

    @property
    def layer(self) -> ActiveLayer:
        return self.job.layer

    @property
    def report(self) -> dict:
        """``obsviz.metrics.summarize`` of the result, plus ``device`` and ``layer`` (computed
        when first asked for, for a run read back from the store). When the layer's W and H are
        not here, what the store alone gives: the relative error, sparsity, seconds and the
        mask's validity; the per-row errors (they need W and H) are ``None``."""
        if self._report is None:
            if self.layer.loaded:
                W, H = self.layer.layer.weight, self.layer.layer.hessian
                report = metrics.summarize(W, H, self.job.geometry, self.result)
            else:
                report = self._stored_report()
            self._report = {**report, "device": self.job.device, "layer": self.layer.label}
        return self._report

    def _stored_report(self) -> dict:
        result = self.result
        rows = result.rows
        mask = result.mask if rows is None else result.mask[rows]
        valid = metrics.validity(result.mask, self.job.geometry, self.job.nnz, rows=rows)
        return {"method": self.method, "rel_error": self.rel_error,
                **dict.fromkeys(("row_rel_error_p50", "row_rel_error_p90", "row_rel_error_p99",
                                 "row_rel_error_max")),
                "sparsity": metrics.sparsity(mask), "valid": valid.ok,
                "bad_blocks": valid.bad_blocks, "bad_scopes": valid.bad_scopes,
                "seconds": self.seconds, "rows": int(mask.shape[0]),
                "geometry": self.job.geometry.to_dict(), "options": dict(result.options)}

    @property
    def in_memory(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> PruneResult:
        if self._result is None:
            self._result = _load_result(self)
            _evict(keep=self.key)
        return self._result

    def evict(self) -> None:
        """Let the pruned weight go (only when the store has it)."""
        if self.stored_id is not None:
            self._result = None

    def __repr__(self) -> str:
        return f"Run({self.key[:12]}…, {self.method}, {self.label!r})"


def trial_of(job: Job, method: str) -> str:
    """The run store's trial key of ``method`` on ``job``: what is computed (the layer's
    contents, not its name)."""
    return trial_key(job.layer.digest, job.geometry, job.nnz, method, job.trial_options(method),
                     job.damp, rows=None if job.sample is None else list(job.sample))


def named_key(trial: str, layer_label: str) -> str:
    """A run's key in the session: its trial and the name of the layer it was asked for on."""
    return f"{trial}|{layer_label}"


def run_key(job: Job, method: str) -> str:
    return named_key(trial_of(job, method), job.layer.label)


def reused_text(name: str | None, layer_label: str) -> str:
    """What a finished result found again is called: ``cached`` (asked before under this name)
    or whose result it reuses (a layer of the same contents under another name)."""
    if name is None or name == layer_label:
        return "cached"
    return f"same contents as {name}: result reused"


# ---- the run store ----------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def _open_store(path: str) -> RunStore | None:
    try:
        return RunStore(path)
    except Exception:   # unusable (read-only home, a file from a newer obsviz): run without it
        return None


def run_store() -> RunStore | None:
    """The app's run database (``obsviz.store.default_store_path()``), or ``None`` when it
    cannot be opened (results then stay in memory only)."""
    return _open_store(str(default_store_path()))


#: What a page that writes to the run store says of what it makes, when the store cannot keep it.
NOT_KEPT = "new runs made here are kept in this session only"


def store_notice(db: RunStore | None, kept: str = NOT_KEPT) -> None:
    """Say so when the run database ``db`` (``run_store()``, or the one a page opened itself)
    cannot keep what the page makes: it is read-only (a read-only filesystem, or a file this
    user may not write; what it holds can still be browsed) or could not be opened (``None``).
    ``kept``: what happens to the page's new results. Every page that writes to the store shows
    it, near its top; nothing when the store can be written."""
    if db is None:
        st.caption(f"The run database cannot be opened (set `OBSVIZ_STORE` to another file): "
                   f"{kept}.")
    elif db.readonly:
        st.info(f"The run database is **read-only** (a read-only filesystem, or a file you may "
                f"not write): what it holds can be browsed, but {kept}. Set `OBSVIZ_STORE` to a "
                "file you can write.", icon=":material/lock:")


def _record(run: Run) -> int | None:
    db = run_store()
    if db is None:
        return None
    job = run.job
    try:
        return db.record(key=run.trial, layer=job.layer.label, source=job.layer.kind,
                         layer_hash=job.layer.digest, shape=job.layer.layer.shape,
                         geometry=job.geometry, nnz=job.nnz, method=run.method,
                         options=job.trial_options(run.method), damp=job.damp,
                         result=run.result)
    except Exception:   # a full disk must not lose the result in memory
        return None


def record_failure(job: Job, method: str, message: str) -> int | None:
    """Keep a method that failed on ``job`` in the run store, with its message (as sweeps keep
    their failed trials); ``None`` when there is no store or it cannot take the row."""
    db = run_store()
    if db is None:
        return None
    try:
        return db.record(key=trial_of(job, method), layer=job.layer.label, source=job.layer.kind,
                         layer_hash=job.layer.digest, shape=job.layer.layer.shape,
                         geometry=job.geometry, nnz=job.nnz, method=method,
                         options=job.trial_options(method), damp=job.damp, status="failed",
                         error=message)
    except Exception:   # the page shows the failure either way
        return None


def _load_result(run: Run) -> PruneResult:
    db = run_store()
    if db is None or run.stored_id is None:
        raise LookupError(f"the result of {run.method} is no longer in memory nor stored")
    tensors = db.tensors(run.stored_id)
    return PruneResult(weight=tensors["weight"], mask=tensors["mask"], error=run.rel_error,
                       seconds=run.seconds, method=run.method,
                       options={"nnz": run.job.nnz, "damp": run.job.damp,
                                **run.job.trial_options(run.method)}, rows=run.job.rows())


def without_weights(chosen: list[Run]) -> list[Run]:
    """The runs of ``chosen`` whose pruned weights cannot be read back: their stored files are
    missing or changed (``obsviz.store.StoredTensorsError``). Their rows (error, seconds) are
    still good; charts that need the weights leave them out."""
    gone = []
    for run in chosen:
        if run.in_memory or run.stored_id is None:
            continue
        try:
            _ = run.result   # read back (and checked) now, as the charts would
        except StoredTensorsError:
            gone.append(run)
    return gone


def _evict(keep: str | None = None) -> None:
    """Keep at most ``MAX_IN_MEMORY`` pruned weights in memory: the newest, and ``keep``."""
    loaded = [r for r in store().values() if r.in_memory and r.key != keep]
    for run in loaded[:max(0, len(loaded) - MAX_IN_MEMORY + (keep is not None))]:
        run.evict()


# ---- the session's collection -----------------------------------------------------------------


def store() -> dict[str, Run]:
    return st.session_state.setdefault("results", {})


def add(run: Run) -> None:
    """Add a finished run to the session (last) and to the run store (a reused one: its layer's
    name, as one more name of the stored run)."""
    runs = store()
    runs.pop(run.key, None)
    runs[run.key] = run
    if run.stored_id is None:
        run.stored_id = _record(run)
    elif run.reused_from is not None:
        db = run_store()
        if db is not None and not db.readonly:
            try:
                db.name_run(run.stored_id, run.layer.label)
            except Exception:   # the session has it either way
                pass
    _evict(keep=run.key)


def _stored_row(trial: str) -> tuple[StoredRun | None, list[str]]:
    """The run store's finished run of ``trial`` and every name it was asked for by."""
    db = run_store()
    try:
        row = None if db is None else db.find(trial)
        return row, [] if row is None else db.layer_names([row.id]).get(row.id, [row.layer])
    except Exception:
        return None, []


def _renamed(run: Run, layer: ActiveLayer) -> Run:
    """``run``'s result under ``layer`` (of the same contents, another name)."""
    out = Run(named_key(run.trial, layer.label), dataclasses.replace(run.job, layer=layer),
              run.method, run._result, None, stored_id=run.stored_id, rel_error=run.rel_error,
              trial=run.trial)
    out.seconds, out.reused_from = run.seconds, run.layer.label
    return out


def lookup(job: Job, method: str) -> Run | None:
    """The finished run of ``method`` on ``job``: from this session, else from the run store
    (a run of an earlier session or before a restart; then added to this session, its weights
    left on disk until asked for), else ``None``. A result of a layer of the same contents under
    another name is reused under ``job``'s layer (its ``reused_from`` names the other)."""
    trial = trial_of(job, method)
    key, name = named_key(trial, job.layer.label), job.layer.label
    runs = store()
    if key in runs and runs[key].layer.loaded:
        return runs[key]
    row, names = _stored_row(trial)
    run = None if row is None else from_row(row, job.layer)
    if run is not None:   # (in place of one listed on its stored layer alone: W is here now)
        if name not in names:
            run.reused_from = names[0] if names else row.layer
        runs[key] = run
        return run
    same = next((r for r in reversed(runs.values()) if r.trial == trial), None)
    if same is None:
        return None
    run = runs[key] = _renamed(same, job.layer)   # this session's alone (no store to ask)
    return run


def done_as(job: Job, method: str) -> str | None:
    """The name of the layer whose finished result ``method`` on ``job`` is: ``job``'s own
    (asked before), another's of the same contents (it would be reused), or ``None`` when it
    has not run (this session, or the run store)."""
    trial = trial_of(job, method)
    if named_key(trial, job.layer.label) in store():
        return job.layer.label
    row, names = _stored_row(trial)
    if row is not None:
        return job.layer.label if job.layer.label in names else (names or [row.layer])[0]
    return next((r.layer.label for r in store().values() if r.trial == trial), None)


def from_row(row: StoredRun, layer: ActiveLayer) -> Run | None:
    """A finished stored run on ``layer``, under its stored key and the layer's name (a sweep's
    rows have keys of their own conventions); its weights stay on disk until asked for.
    ``None`` for a row this version cannot read."""
    try:
        opts = dict(row.options)
        device = str(opts.pop("device", None) or row.device or "cpu")
        sample = opts.pop("sample", None)
        job = Job(layer, row.geometry_obj(), int(row.nnz),
                  0.01 if row.damp is None else float(row.damp), device,
                  {**DEFAULT_OPTIONS, **opts}, None if sample is None else tuple(sample))
        run = Run(named_key(row.key, layer.label) if row.key else f"stored-{row.id}", job,
                  row.method, None, None, stored_id=row.id, rel_error=row.rel_error,
                  trial=row.key or f"stored-{row.id}")
        run.seconds = float(row.seconds or 0.0)
        return run
    except Exception:
        return None
