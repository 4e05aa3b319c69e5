"""How fast the app answers in a real browser: the Geometry page's preset switch.

Starts the app (``streamlit run app.py``) on a free localhost port with its own run store,
drives Debian's Chromium (``/usr/bin/chromium``) through Playwright, and prints, per preset
switch, the seconds from the click on the preset to the redrawn maps (the column map's title
names the new geometry), first visit and cached, then the median.

    python benchmarks/bench_app.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: preset -> text its column map's title shows once redrawn (on the 384 x 384 sample layer)
PRESETS = {"coupled-2:4": "touches columns c and c+8",
           "block16": "touches 16 neighbouring columns",
           "2:4": "every block here touches a single column"}


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OBSVIZ_STORE": str(log.parent / "runs.sqlite")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    raise RuntimeError(f"the app did not start; see {log}")


def switch(page, preset: str) -> float:
    """Seconds from choosing ``preset`` to its maps drawn."""
    start = time.perf_counter()
    page.get_by_role("combobox", name="Pattern", exact=True).click()
    page.get_by_role("option", name=preset, exact=True).click()
    page.locator(".js-plotly-plot .gtitle", has_text=PRESETS[preset]).first.wait_for(
        timeout=120_000)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="cached rounds after the first")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="obsviz-bench-app-"))
    proc, url = start_server(work / "server.log")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/geometry", wait_until="domcontentloaded")
            page.locator(".js-plotly-plot .gtitle", has_text=PRESETS["2:4"]).first.wait_for(
                timeout=180_000)
            first = {p: switch(page, p) for p in ("coupled-2:4", "block16", "2:4")}
            cached = [switch(page, p) for _ in range(args.rounds)
                      for p in ("coupled-2:4", "block16", "2:4")]
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    print("Geometry preset switch, click to redrawn maps (384 x 384 sample layer):")
    for preset, seconds in first.items():
        print(f"  first visit  {preset:12s} {seconds:6.2f} s")
    print(f"  cached       median {statistics.median(cached):.2f} s, max {max(cached):.2f} s "
          f"over {len(cached)} switches")


if __name__ == "__main__":
    main()
