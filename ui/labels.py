"""Display labels of runs. Labels are for display only; runs are identified by their key.

- ``describe``: the method and the options that set it apart, while a run is in progress.
- ``facets``: everything that describes a finished run, the input of
  ``obsviz.figures.results.short_labels`` (one home for how labels are shortened).
- ``shown_labels``: labels for runs shown together — the method plus only what differs between
  them — and ``relabel``: such labels over the session's whole collection (unique there).
"""

from __future__ import annotations

from obsviz import Geometry
from obsviz.figures.results import Label, short_labels

from ui.runs import DEFAULT_OPTIONS, Job, Run, store


def describe(job: Job, method: str) -> str:
    """``true_obs (ng=8)``: the method and the options that set it apart."""
    opts = job.method_options(method)
    shown = {k: v for k, v in opts.items() if k == "n_splits" or v != DEFAULT_OPTIONS[k]}
    text = method + (f" ({', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else "")
    return text


def sample_text(sample: tuple[str, int] | None) -> str:
    if sample is None:
        return "all rows"
    how, n = sample
    return f"first {n} rows" if how == "first" else f"every {n}th row"


def geometry_text(geometry: Geometry, nnz: int) -> str:
    """What pruning ``geometry`` with ``nnz`` is called (``Geometry.run_name``): a preset's
    name as run (``"4:8"`` at nnz 1 is ``"1:8"``), or the free-form view, block and scope."""
    return geometry.run_name(nnz)


def facets(run: Run) -> dict:
    """What describes ``run``, by facet (``obsviz.figures.results.FACETS``)."""
    job = run.job
    return {"method": run.method, "options": job.method_options(run.method),
            "geometry": geometry_text(job.geometry, job.nnz), "nnz": f"nnz={job.nnz}",
            "sample": sample_text(job.sample), "damp": f"damp={job.damp:g}",
            "device": job.device, "layer": run.layer.label}


def shown_labels(runs: list[Run]) -> dict[str, Label]:
    """``run key -> Label`` for runs shown together."""
    return dict(zip((r.key for r in runs), short_labels([facets(r) for r in runs]),
                    strict=True))


def relabel() -> None:
    """Give every run of the session's collection its short label, unique there: the method,
    then only what sets it apart from the other runs (options, geometry, nnz, row sample, …,
    layer)."""
    runs = list(store().values())
    for run, label in zip(runs, shown_labels(runs).values(), strict=True):
        run.label = label.short
