"""The README's browser example ("In the browser: the JavaScript SDK") as written, in Chromium:
a page of another origin (the application's, served here by a small HTTP server of the test's
on another port) imports the SDK and yjs that `plait serve` serves, through nothing but an
import map, and two such pages meet in a room."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import Contexts, Server, start_plait_serve, stop_plait_serve

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_page(port: int) -> str:
    section = README.read_text(encoding="utf-8").split("## In the browser: the JavaScript SDK", 1)[1]
    html = re.search(r"```html\n(.*?)```", section, re.S)
    assert html is not None, "the README's browser example is gone"
    return "<!doctype html><title>app</title>\n" + html.group(1).replace("127.0.0.1:8765", f"127.0.0.1:{port}")


@dataclass
class App:
    origin: str
    plait: Server


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    """The application's own web server (another origin than Plait's: `localhost` and another
    port), serving the README's page, and `plait serve` allowing that origin."""
    page: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page[0])))
            self.end_headers()
            self.wfile.write(page[0])

        def log_message(self, format: str, *args: Any) -> None:  # the base class's name
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    origin = f"http://localhost:{web.server_address[1]}"
    try:
        served = start_plait_serve("--store", "memory", "--allow-origin", origin)
        try:
            page.append(readme_page(served.port).encode())
            yield App(origin, served)
        finally:
            stop_plait_serve(served.process)
    finally:
        web.shutdown()
        web.server_close()
        thread.join(10)


def open_app(contexts: Contexts, app: App) -> tuple[Any, list[str]]:
    page = contexts.new().new_page()
    logged: list[str] = []
    page.on("console", lambda message: logged.append(message.text))
    page.on("pageerror", lambda error: logged.append(f"pageerror: {error}"))
    page.goto(f"{app.origin}/")
    return page, logged


def test_the_readme_example_runs_in_a_page_of_another_origin(app: App, contexts: Contexts) -> None:
    first, first_log = open_app(contexts, app)
    first.wait_for_function("document.title === 'open (websocket)'")
    second, second_log = open_app(contexts, app)
    second.wait_for_function("document.title === 'open (websocket)'")
    # Each page published "chat" once; the second joined after the first's event, which it
    # does not replay (no `since`), so it logs its own; the first logs both.
    for page, log, count in ((first, first_log, 2), (second, second_log, 1)):
        for _ in range(count):  # each wait takes one console message (bounded by WAIT_MS)
            if sum(line.startswith("chat") for line in log) >= count:
                break
            page.wait_for_event("console", predicate=lambda message: message.text.startswith("chat"))
        assert sum(line.startswith("chat") for line in log) == count, log
        assert not [line for line in log if line.startswith("pageerror")], log
