"""Fixtures of the real-browser suite: one Streamlit server for the session, one Chromium.

The server is started the way the README starts the app (``streamlit run app.py``), on a free
localhost port, and its whole process group is always stopped, whatever happens to the tests.
Chromium is Debian's (``/usr/bin/chromium``) driven by Playwright's Python package; without
either, the suite is skipped with the reason, unless ``OBSVIZ_REQUIRE_BROWSER=1`` (set by CI)
asks for it to fail instead.

Screenshots go to ``$OBSVIZ_E2E_SHOTS`` or ``artifacts/e2e/<timestamp>/``; the folder (and the
server's log, ``server.log``, in it) is reported at the start and the end of the run.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
REQUIRE_ENV = "OBSVIZ_REQUIRE_BROWSER"
SHOTS_ENV = "OBSVIZ_E2E_SHOTS"

START_TIMEOUT = 120.0     # s until /_stcore/health answers (first imports are slow on CPU)
STOP_GRACE = 10.0         # s between SIGTERM and SIGKILL
PORT_TRIES = 5            # fresh ports tried when the chosen one turns out to be taken
LOG_TAIL = 60             # server log lines shown with a failure

#: The run's state, reported by ``pytest_terminal_summary`` (set once the suite starts), and what
#: the cold server's first session showed.
_run: dict = {}


# ---- what the suite needs ---------------------------------------------------------------------


def missing_requirement() -> str | None:
    """Why the browser suite cannot run here, or ``None`` when it can."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        return f"the playwright Python package is not importable ({err}); pip install -e .[dev]"
    return None


@pytest.fixture(scope="session")
def browser_requirements() -> None:
    """Skip the suite, with the reason, when it cannot run; fail instead when it must run."""
    reason = missing_requirement()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but the browser suite cannot run: {reason}",
                    pytrace=False)
    pytest.skip(f"browser suite skipped: {reason}")


# ---- where screenshots go ---------------------------------------------------------------------


def _announce(config: pytest.Config, line: str) -> None:
    """Write ``line`` to the terminal even while pytest captures output."""
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
    with ctx:
        if reporter is not None:
            reporter.write_line(line)
        else:
            print(line, flush=True)


@pytest.fixture(scope="session")
def shots_dir(request: pytest.FixtureRequest, browser_requirements: None) -> Path:
    """This run's folder for screenshots and the server log."""
    chosen = os.environ.get(SHOTS_ENV)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(chosen) if chosen else ROOT / "artifacts" / "e2e" / stamp
    folder.mkdir(parents=True, exist_ok=True)
    _run["shots"] = folder.resolve()
    _announce(request.config, f"\n[e2e] screenshots and server log: {_run['shots']}")
    return _run["shots"]


def pytest_terminal_summary(terminalreporter) -> None:
    if "shots" in _run:
        terminalreporter.write_sep("-", "e2e artifacts")
        terminalreporter.write_line(f"screenshots and server log: {_run['shots']}")


# ---- the Streamlit server ---------------------------------------------------------------------


def free_port() -> int:
    """A localhost port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


class Server:
    """``streamlit run app.py`` in its own process group, stopped by ``stop()`` (idempotent)."""

    def __init__(self, log: Path):
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> str:
        for _ in range(PORT_TRIES):
            port = free_port()
            if self._start_on(port):
                return self.url
            taken = rf"Port {port} is (already in use|not available)"
            if not re.search(taken, log_tail(self.log, 5)):
                break                      # it failed for another reason: say why below
        raise RuntimeError(f"the Streamlit server did not come up; its log ({self.log}) ends:\n"
                           f"{log_tail(self.log)}")

    def _start_on(self, port: int) -> bool:
        cmd = [sys.executable, "-m", "streamlit", "run", "app.py",
               "--server.headless", "true", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
               "--logger.enableRich", "false"]   # the project's file watcher (config.toml)
        # the server's own run store, beside its log (never the user's)
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "OBSVIZ_STORE": str(self.log.parent / "runs.sqlite")}
        with self.log.open("ab") as out:
            out.write(f"\n$ {' '.join(cmd)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as reply:
                    healthy = reply.status == 200 and reply.read().strip() == b"ok"
            except OSError:
                healthy = False
            # ...and it is this server that answers (its log names the URL), not another one
            # that held the port first
            if healthy and self.url in self.log.read_text(errors="replace"):
                return True
            time.sleep(0.5)
        self.stop()
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)   # the group: streamlit and anything it started
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="session")
def server(shots_dir: Path) -> Iterator[Server]:
    """The app, served on a free localhost port; always stopped (also on Ctrl-C: atexit)."""
    srv = Server(shots_dir / "server.log")
    atexit.register(srv.stop)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        atexit.unregister(srv.stop)


@pytest.fixture(scope="session")
def base_url(server: Server) -> str:
    return server.url


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """A failing e2e test shows the tail of the server's log and leaves a screenshot of its
    tab(s) as ``FAILED-<test>.png``."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or "shots" not in _run:
        return
    report.sections.append(("streamlit server log (tail)",
                            log_tail(_run["shots"] / "server.log")))
    tabs = [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, AppPage)]
    for i, tab in enumerate(tabs):
        with contextlib.suppress(Exception):
            shot = tab.shot(f"FAILED-{item.name}" + (f"-{i}" if i else ""))
            report.sections.append(("screenshot", str(shot)))


# ---- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser(browser_requirements: None) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class AppPage:
    """One browser tab on the app: navigation, settling, the exception check, screenshots.

    ``errors`` collects uncaught page errors (``pageerror``); ``check()`` fails on them and on
    any exception Streamlit renders (``[data-testid="stException"]``).
    """

    SETTLE_TIMEOUT = 120_000   # ms a script run may take (a pruning run on CPU)

    def __init__(self, page, base_url: str, shots: Path):
        self.page = page
        self.base_url = base_url
        self.shots = shots
        self.errors: list[str] = []
        page.on("pageerror", lambda err: self.errors.append(str(err)))
        page.set_default_timeout(60_000)

    def open(self, path: str = "/") -> AppPage:
        """Load ``path`` (a fresh Streamlit session) and wait until its script has run."""
        self.page.goto(self.base_url + path, wait_until="domcontentloaded")
        self.page.locator('[data-testid="stApp"]').wait_for(state="attached")
        self.page.locator('[data-testid="stMain"] h1').first.wait_for(state="visible")
        # widgets can show seconds after the page's text (Streamlit 1.67, a busy 2-core machine:
        # 7 s then 10 s on /geometry): every page's sidebar has the Device box, so the page is
        # not ready before it is
        self.page.locator('[data-testid="stSidebar"]').get_by_role(
            "combobox", name="Device", exact=True).wait_for(timeout=self.SETTLE_TIMEOUT)
        return self.settle()

    def settle(self, pause: float = 0.5) -> AppPage:
        """Wait until the app is idle: no script running (the status widget gone), twice in a
        row ``pause`` apart, so that a rerun just triggered has had the time to show."""
        status = self.page.locator('[data-testid="stStatusWidget"]')
        deadline = time.monotonic() + self.SETTLE_TIMEOUT / 1000
        quiet = 0
        while quiet < 2:
            if time.monotonic() > deadline:
                raise AssertionError("the app did not finish running its script in time")
            self.page.wait_for_timeout(pause * 1000)
            if status.count() and status.first.is_visible():
                quiet = 0
                status.first.wait_for(state="hidden", timeout=self.SETTLE_TIMEOUT)
            else:
                quiet += 1
        return self

    def check(self) -> AppPage:
        """Fail when the page shows a Python exception, the browser raised one, or Streamlit did
        not find the page."""
        shown = self.page.locator('[data-testid="stException"]')
        if shown.count():
            texts = [t.strip()[:2000] for t in shown.all_inner_texts()]
            raise AssertionError("the page raised:\n" + "\n---\n".join(texts))
        assert not self.errors, f"uncaught errors in the browser: {self.errors}"
        assert self.page.get_by_text("Page not found").count() == 0, \
            "Streamlit showed its 'Page not found' dialog"
        return self

    def shot(self, name: str) -> Path:
        """Save the whole page as ``<name>.png``. Streamlit scrolls inside its main block, not
        the document, so the window is made as tall as the content for the shot."""
        path = self.shots / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        size = self.page.viewport_size
        tall = self.page.evaluate(
            "() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
            " return m ? m.scrollHeight : 0; }")
        if size and tall > size["height"]:
            self.page.set_viewport_size({"width": size["width"], "height": min(tall, 8000)})
            self.page.wait_for_timeout(300)
        try:
            self.page.screenshot(path=str(path), full_page=True)
        finally:
            if size:
                self.page.set_viewport_size(size)
        return path

    def navigation(self) -> list[str]:
        """The link texts of the sidebar's navigation (page titles)."""
        nav = self.page.locator('[data-testid="stSidebarNav"] a')
        return [t.strip().split("\n")[-1] for t in nav.all_inner_texts()]

    def sidebar_text(self) -> str:
        return self.page.locator('[data-testid="stSidebar"]').inner_text()

    def main_text(self) -> str:
        return self.page.locator('[data-testid="stMain"]').inner_text()

    def go(self, nav_title: str) -> AppPage:
        """Switch page through the sidebar navigation (keeps the Streamlit session)."""
        nav = self.page.locator('[data-testid="stSidebarNav"]')
        nav.get_by_role("link", name=nav_title, exact=True).click()
        self.page.wait_for_url(re.compile(r".*"), wait_until="commit")
        return self.settle()


@pytest.fixture(scope="session")
def new_app(browser, base_url: str, shots_dir: Path) -> Iterator[Callable[[], AppPage]]:
    """A factory of fresh tabs, each in its own browser context; all closed at the end.

    A shared link to a page is opened first, on the cold server: it pays for the first imports
    and proves a link straight to a page works on a fresh server (Streamlit answers that with a
    "Page not found" dialog unless the page files under pages/ carry their URL names).
    """
    contexts = []

    def make() -> AppPage:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(context)
        return AppPage(context.new_page(), base_url, shots_dir)

    cold = make().open("/geometry?pattern=block16").check()
    _run["cold_nav"] = cold.navigation()        # what that first session's sidebar listed
    _run["cold_sidebar"] = cold.sidebar_text()
    yield make
    for context in contexts:
        with contextlib.suppress(Exception):
            context.close()


@pytest.fixture(scope="session")
def cold_start(new_app: Callable[[], AppPage]) -> dict:
    """What the cold server's first session (a page link, opened by ``new_app``) showed:
    ``nav`` (the navigation's titles) and ``sidebar`` (the sidebar's text)."""
    return {"nav": _run["cold_nav"], "sidebar": _run["cold_sidebar"]}


@pytest.fixture
def cold_app(browser, shots_dir: Path) -> Iterator[Callable[[str], AppPage]]:
    """``open(path)``: a fresh server of its own (cold: nothing imported, no session yet) and a
    tab opened straight at ``path`` as its first session; both closed after the test."""
    servers, contexts = [], []

    def open_(path: str) -> AppPage:
        server = Server(shots_dir / f"server-cold-{re.sub(r'[^A-Za-z0-9]+', '-', path)}.log")
        servers.append(server)
        server.start()
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(context)
        return AppPage(context.new_page(), server.url, shots_dir).open(path).check()

    yield open_
    for context in contexts:
        with contextlib.suppress(Exception):
            context.close()
    for server in servers:
        server.stop()


@pytest.fixture
def app(new_app: Callable[[], AppPage]) -> AppPage:
    """A fresh tab (a fresh Streamlit session) for one test."""
    return new_app()
