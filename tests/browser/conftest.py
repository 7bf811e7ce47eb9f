"""Real-browser tests of the demo page: Debian's Chromium (/usr/bin/chromium) driven by
Playwright's sync API, against `plait serve --port 0 --store memory` started per test module.

Rules:
- Plain (non-async) tests: Playwright's sync API runs its own event loop, which does not mix
  with pytest-trio's; the server is a subprocess, stopped by its pid.
- No browser download: Playwright's driver ships in its wheel, the browser is the system's.
- Every wait is bounded (a context's default timeout, WAIT_MS); a failing test leaves a
  screenshot of each of its pages in tests/browser/screenshots/ (or $PLAIT_SCREENSHOTS).
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000
"""The longest any one wait in a page may take."""
SCREENSHOTS = Path(os.environ.get("PLAIT_SCREENSHOTS") or Path(__file__).parent / "screenshots")
SERVING = re.compile(rb"serving on ws://127.0.0.1:(\d+)/")


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_plait_serve(*args: str, timeout: float = 60) -> Server:
    """`plait serve --port 0 ARGS` as a process; returns once it says it serves."""
    process = subprocess.Popen(
        [sys.executable, "-m", "plait.engine._cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while not (found := SERVING.search(seen)):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"plait serve did not say it serves within {timeout} s: {seen!r}"
            ready, _, _ = select.select([process.stdout], [], [], remaining)
            if ready:
                chunk = os.read(process.stdout.fileno(), 4096)
                assert chunk, f"plait serve exited: {seen!r}"
                seen += chunk
    except BaseException:
        stop_plait_serve(process)
        raise
    return Server(int(found.group(1)), process)


def stop_plait_serve(process: subprocess.Popen[bytes]) -> None:
    """SIGINT to its pid (a graceful shutdown), SIGKILL past 30 s."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    served = start_plait_serve("--store", "memory")
    try:
        yield served
    finally:
        stop_plait_serve(served.process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one module: Playwright's sync API leaves its asyncio loop marked running in
    this thread until it stops, which a later test's `asyncio.run` would refuse."""
    if not CHROMIUM.exists():  # failed, not skipped: a suite that skips it proves nothing of it
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)", pytrace=False)
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=60_000)
        try:
            yield launched
        finally:
            launched.close()
    finally:
        playwright.stop()


@dataclass
class Contexts:
    """The browser contexts (separate users: own storage, own anonymous key) a test opens;
    all closed after it."""

    browser: Any
    opened: list[Any] = field(default_factory=list)

    def new(self, **options: Any) -> Any:
        context = self.browser.new_context(**{"viewport": {"width": 900, "height": 720}, **options})
        context.set_default_timeout(WAIT_MS)
        self.opened.append(context)
        return context

    def pages(self) -> list[Any]:
        return [page for context in self.opened for page in context.pages]

    def close(self) -> None:
        for context in self.opened:
            try:
                context.close()
            except Exception:  # a context whose browser is gone: nothing left to close
                pass


@pytest.fixture
def contexts(browser: Any) -> Iterator[Contexts]:
    opened = Contexts(browser)
    try:
        yield opened
    finally:
        opened.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    opened = getattr(item, "funcargs", {}).get("contexts")
    if not isinstance(opened, Contexts):
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.name)[:120]
    for number, page in enumerate(opened.pages()):
        path = SCREENSHOTS / f"{stem}-{number}.png"
        try:
            page.screenshot(path=str(path), full_page=True, timeout=5_000)
        except Exception as exc:  # a page that crashed or closed: say so, keep the test's own failure
            report.sections.append(("screenshot", f"{path}: not taken ({exc})"))
        else:
            report.sections.append(("screenshot", str(path)))
