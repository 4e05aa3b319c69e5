"""Display labels of runs: ``describe`` (the method and the options that set it apart),
``sample_text`` (the row sample in words) and ``relabel`` (short labels, unique in the session's
collection). Labels are for display only; runs are identified by their key."""

from __future__ import annotations

from ui.runs import DEFAULT_OPTIONS, Job, Run, store


def describe(job: Job, method: str) -> str:
    """``true_obs (ng=16)``: the method and the options that set it apart."""
    opts = job.method_options(method)
    shown = {k: v for k, v in opts.items() if k in ("n_splits", "ng") or v != DEFAULT_OPTIONS[k]}
    text = method + (f" ({', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else "")
    return text


def sample_text(sample: tuple[str, int] | None) -> str:
    if sample is None:
        return "all rows"
    how, n = sample
    return f"first {n} rows" if how == "first" else f"every {n}th row"


def relabel() -> None:
    """Give every stored run a short label, unique in the store: the method and its options,
    then (only where it is needed to tell runs apart) the geometry, the row sample, the layer."""
    runs = list(store().values())
    for run in runs:
        run.label = describe(run.job, run.method)
    extras = (
        lambda r: r.job.geometry.name or "free-form",
        lambda r: f"nnz={r.job.nnz}",
        lambda r: sample_text(r.job.sample),
        lambda r: f"damp={r.job.damp:g}",
        lambda r: r.job.device,
        lambda r: r.layer.label,
    )
    for extra in extras:
        by_label: dict[str, list[Run]] = {}
        for run in runs:
            by_label.setdefault(run.label, []).append(run)
        for same in by_label.values():
            if len(same) > 1 and len({extra(r) for r in same}) > 1:
                for r in same:
                    r.label = f"{r.label} · {extra(r)}"
