"""How fast the Compare page settles in a real browser with nine results of a 1536 × 384 layer.

    python benchmarks/bench_compare.py [--store PATH] [--preset 2:4] [--rounds 3]

Puts all nine methods' results of the sample layer ``layer0.mlp_up`` (1536 × 384) into a run
store (computed once; the store is kept, so later runs reuse it), starts the app on that store
(``streamlit run app.py``, as ``bench_app.py`` does) and drives Debian's Chromium through
Playwright. It prints the seconds until the page has settled (no script running, every chart
drawn, nothing changing for 0.8 s):

- a fresh session opened at Compare, its nine results shown from the run store (as after a
  restart, with no click; the first visit computes each result's maps once),
- a second fresh session (the maps already computed, as after the Prune page ran the methods:
  it computes each result's maps as the result comes in),
- switching the map kind (error contribution ↔ kept mask; each figure built once, then cached),
- adding a result back to the selection.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_app import ARGS, CHROMIUM, start_server  # noqa: E402

LAYER = "layer0.mlp_up"
SETTLED = """() => [
    !!document.querySelector('[data-testid="stStatusWidget"]'),
    document.querySelectorAll('.js-plotly-plot').length,
    document.querySelectorAll('.js-plotly-plot .main-svg').length,
    document.querySelectorAll('[data-testid="stSkeleton"]').length]"""


def fill_store(path: Path, preset: str) -> None:
    """Every method's result of ``LAYER`` with ``preset`` in the store at ``path``, keyed as the
    app keys them (what the Prune page would have written); results already there are kept."""
    from obsviz import METHODS, Geometry, prune
    from obsviz.store import RunStore

    from ui import layers, runs

    store = RunStore(path)
    active = layers.sample(LAYER)
    geometry = Geometry.preset(preset, active.layer.shape)
    job = runs.Job(active, geometry, int(geometry.nnz))
    for method in METHODS:
        key = runs.run_key(job, method)
        if store.find(key) is not None:
            continue
        start = time.perf_counter()
        result = prune(active.layer.weight, active.layer.hessian, geometry, job.nnz,
                       method=method, damp=job.damp, device=job.device,
                       **job.method_options(method))
        store.record(key=key, layer=active.label, source=active.kind,
                     layer_hash=active.digest, shape=active.layer.shape, geometry=geometry,
                     nnz=job.nnz, method=method, options=job.trial_options(method),
                     damp=job.damp, result=result)
        print(f"  stored {method} ({time.perf_counter() - start:.1f} s)", flush=True)


def settle(page, start: float, timeout: float = 300.0) -> float:
    """Seconds from ``start`` until the page settled (see the module's docstring)."""
    last, since = None, time.perf_counter()
    while time.perf_counter() - start < timeout:
        state = page.evaluate(SETTLED)
        now = time.perf_counter()
        running, charts, drawn, skeletons = state
        ready = not running and charts > 0 and drawn >= charts and not skeletons
        if not ready or state != last:
            last, since = state, now
        elif now - since >= 0.8:
            return since - start
        time.sleep(0.05)
    raise TimeoutError("the Compare page did not settle")


def open_stored(page, url: str) -> float:
    """Open Compare in ``page`` (a fresh session): the stored runs are shown as they are (the
    latest run's results, as after a restart); seconds from the navigation until the page
    settled."""
    start = time.perf_counter()
    page.goto(f"{url}/compare?layer={LAYER}", wait_until="domcontentloaded")
    return settle(page, start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path,
                        default=Path(tempfile.gettempdir()) / "obsviz-bench-compare" /
                        "runs.sqlite", help="run store to fill and open (kept between runs)")
    parser.add_argument("--preset", default="2:4")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    args.store.parent.mkdir(parents=True, exist_ok=True)
    print(f"nine results of {LAYER} with {args.preset} in {args.store}")
    fill_store(args.store, args.preset)

    from playwright.sync_api import sync_playwright

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    proc, url = start_server(args.store.parent / "server.log")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # warm the server (imports) and the browser (plotly.js) on another page first
            page.goto(f"{url}/geometry?layer={LAYER}", wait_until="domcontentloaded")
            settle(page, time.perf_counter())
            first = open_stored(page, url)
            # a second fresh session: the maps are computed already, as right after the Prune
            # page ran the methods (it computes each result's maps as the result comes in)
            again = browser.new_page(viewport={"width": 1400, "height": 1000})
            warm = open_stored(again, url)
            again.close()
            shown = page.locator('[data-testid="stMultiSelect"] [data-tag]').count()
            switches, adds = [], []
            for _ in range(args.rounds):
                time.sleep(0.5)
                for button, title in (("Kept mask", "kept fraction"),
                                      ("Error contribution", "error")):
                    start = time.perf_counter()
                    page.get_by_text(button, exact=True).click()
                    page.locator(".js-plotly-plot .cbtitle", has_text=title).first.wait_for(
                        timeout=120_000)
                    switches.append(settle(page, start))
                box = page.locator('[data-testid="stMultiSelect"]')
                name = box.locator("[data-tag]").last.get_attribute("aria-label")
                box.locator(f'button[aria-label="Remove {name}"]').last.click(force=True)
                settle(page, time.perf_counter())
                start = time.perf_counter()
                box.locator("input").last.click(force=True)
                page.keyboard.type(name)
                page.keyboard.press("Enter")
                page.keyboard.press("Escape")
                adds.append(settle(page, start))
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    print(f"Compare showing {shown} results of {LAYER} (1536 x 384), Chromium, load average "
          f"{load:.1f} at the start:")
    print(f"  fresh session, stored results opened (maps computed once per result)  {first:6.2f} s")
    print(f"  fresh session, maps already computed (after a Prune run)  {warm:6.2f} s")
    print(f"  map kind switched          median {statistics.median(switches):6.2f} s, "
          f"max {max(switches):.2f} s (first of each kind computed, then cached)")
    print(f"  adding a result back       median {statistics.median(adds):6.2f} s, "
          f"max {max(adds):.2f} s")


if __name__ == "__main__":
    main()
