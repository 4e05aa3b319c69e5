"""Downloads: the metrics report of runs as rows, CSV or JSON, and a pruned layer as
``.safetensors`` (``obsviz.save_pruned``)."""

from __future__ import annotations

import json

from obsviz import save_pruned

from ui.runs import Run


def safetensors_bytes(run: Run) -> bytes:
    """The pruned layer as ``obsviz.save_pruned`` writes it (weight, mask, Hessian, report), so
    ``obsviz.load_layer`` reads the download back."""
    layer = run.layer.layer   # None for a stored run whose layer is not here: no Hessian then
    return save_pruned(None, run.result, hessian=None if layer is None else layer.hessian,
                       name=run.layer.label if layer is None else layer.name,
                       report=json.loads(json.dumps(run.report, default=str)),
                       nsamples=None if layer is None else layer.nsamples,
                       source=f"{run.layer.label}, pruned ({run.label or run.method})")


REPORT_COLUMNS = ("label", "method", "layer", "rel_error", "row_rel_error_p50",
                  "row_rel_error_p90", "row_rel_error_p99", "row_rel_error_max", "sparsity",
                  "valid", "bad_blocks", "bad_scopes", "seconds", "device", "rows")


def report_rows(runs: list[Run]) -> list[dict]:
    """The metrics table: ``summarize``'s report of each run, plus its label."""
    return [{"label": r.label, **r.report} for r in runs]


def report_csv(runs: list[Run]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*REPORT_COLUMNS, "geometry", "options"],
                            extrasaction="ignore")
    writer.writeheader()
    for row in report_rows(runs):
        writer.writerow({**row, "geometry": json.dumps(row["geometry"]),
                         "options": json.dumps(row["options"], default=str)})
    return out.getvalue()


def report_json(runs: list[Run]) -> str:
    return json.dumps(report_rows(runs), indent=2, default=str)
