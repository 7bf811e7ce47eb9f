"""The demo page's routes (engine/http/_demo.py) as a browser and a hostile client reach them:
an engine on a free port of 127.0.0.1 with the routes added, as `plait serve` adds them, over
files made here (the built page is checked by test_demo_assets.py, `plait serve --demo` by a
test of its own below). Every wait is bounded."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from plait.engine import Engine
from plait.engine.http._demo import Asset, Demo, load_assets

from .serveprocess import plait_serve
from .test_http_hostile import conversation, exchange

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
FILES = {
    "index.html": (b"<!doctype html><title>demo</title>", "text/html; charset=utf-8"),
    "demo.js": (b"console.log('demo')", "text/javascript; charset=utf-8"),
    "style.css": (b"body{}", "text/css; charset=utf-8"),
}


def assets() -> dict[str, Asset]:
    return {name: Asset(body, kind, '"' + hashlib.sha256(body).hexdigest()[:32] + '"') for name, (body, kind) in FILES.items()}


@asynccontextmanager
async def served(demo: bool = True) -> AsyncIterator[int]:
    async with Engine() as engine, trio.open_nursery() as nursery:
        if demo:
            Demo(assets()).add_to(engine.router)
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        yield port
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def http_client() -> AsyncIterator[tuple[int, httpx.AsyncClient]]:
    async with served() as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        yield port, http


@pytest.mark.parametrize(("path", "name"), [("/demo/", "index.html"), ("/demo/index.html", "index.html"), ("/demo/demo.js", "demo.js"),
                                            ("/demo/style.css", "style.css"), ("/demo/?room=a%20b", "index.html")])
async def test_each_file_with_its_content_type_and_etag(path: str, name: str) -> None:
    async with http_client() as (_, http):
        response = await http.get(path)
        body, kind = FILES[name]
        assert (response.status_code, response.content) == (200, body)
        assert response.headers["content-type"] == kind
        assert response.headers["cache-control"] == "no-cache"
        etag = response.headers["etag"]
        again = await http.get(path, headers={"If-None-Match": etag})
        assert (again.status_code, again.content) == (304, b"")
        assert (await http.get(path, headers={"If-None-Match": f'"other", W/{etag}'})).status_code == 304
        assert (await http.get(path, headers={"If-None-Match": '"stale"'})).status_code == 200


async def test_head_is_the_head_alone() -> None:
    async with served() as port:
        raw = await conversation(port, b"HEAD /demo/demo.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body == b""
        assert b"content-length: %d" % len(FILES["demo.js"][0]) in head.lower()


HOSTILE_PATHS = [
    "/demo/../engine/_cli.py",
    "/demo/..%2f..%2fpyproject.toml",
    "/demo/%2e%2e/%2e%2e/pyproject.toml",
    "/demo/%2e%2e%2fpyproject.toml",
    "/demo/.%2e/_demo.py",
    "/demo//etc/passwd",
    "/demo/%2fetc%2fpasswd",
    "/demo/..\\..\\pyproject.toml",
    "/demo/index.html%00.js",
    "/demo/index.html/",
    "/demo/INDEX.HTML",
    "/demo/nothing.js",
    "/demo/" + "a" * 8000,
    "/demo/%ff%fe",
    "/demox/index.html",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
async def test_anything_else_under_demo_is_404_and_reads_no_file(path: str) -> None:
    async with served() as port:
        status, body = await exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert status == 404, body
        assert b"[tool" not in body and b"import" not in body and b"root:" not in body
        await _still_serves(port)


async def test_a_nul_byte_or_control_character_in_the_target_is_refused() -> None:
    async with served() as port:
        for raw in (b"GET /demo/index.html\x00 HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /demo/\x7f HTTP/1.1\r\nHost: x\r\n\r\n"):
            status, _ = await exchange(port, raw)
            assert status in (400, 404)
        await _still_serves(port)


async def test_a_very_long_path_is_refused_not_served() -> None:
    async with served() as port:
        status, _ = await exchange(port, b"GET /demo/" + b"../" * 6000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 431  # over the 16 KiB of request line and headers
        await _still_serves(port)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
@pytest.mark.parametrize("path", ["/demo/", "/demo/demo.js", "/demo"])
async def test_a_method_other_than_get_or_head_is_405(method: str, path: str) -> None:
    async with http_client() as (port, http):
        response = await http.request(method, path, content=b"x")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"
        await _still_serves(port)


async def test_a_browser_opening_the_root_is_sent_to_the_demo_with_its_query() -> None:
    async with http_client() as (_, http):
        page = await http.get("/", headers={"Accept": BROWSER_ACCEPT})
        assert page.status_code == 302
        assert page.headers["location"] == "demo/"
        assert page.headers["cache-control"] == "no-store"
        with_room = await http.get("/?room=team-1", headers={"Accept": BROWSER_ACCEPT})
        assert with_room.headers["location"] == "demo/?room=team-1"
        bare = await http.get("/demo")
        assert (bare.status_code, bare.headers["location"]) == (302, "demo/")
        followed = await http.get("/?room=x", headers={"Accept": BROWSER_ACCEPT}, follow_redirects=True)
        assert (followed.status_code, str(followed.url).split("127.0.0.1")[1].split("/", 1)[1]) == (200, "demo/?room=x")


@pytest.mark.parametrize("query", ["a\"b", "a<script>", "a{b}", "x" * 2000, "%0d%0aSet-Cookie:x=1", "a'b"])
async def test_a_query_that_is_not_plain_is_left_out_of_the_redirect(query: str) -> None:
    async with served() as port:
        raw = await conversation(port, f"GET /?{query} HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\nConnection: close\r\n\r\n".encode())
        head = raw.partition(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 302")
        location = [line for line in head.split(b"\r\n") if line.startswith(b"location:")]
        assert location in ([b"location: demo/"], [b"location: demo/?" + query.lower().encode()])
        assert b"set-cookie" not in head.replace(b"location: demo/?%0d%0aset-cookie", b"")


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 426),  # no Accept: a client, not a browser's page
        (b"GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n", 426),
        (b"GET / HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n", 426),
        (b"HEAD / HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n\r\n", 426),
        (b"POST / HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /yjs/room HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n\r\n", 426),
        (b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\nContent-Length: 5\r\n\r\nhello", 413),
    ],
)
async def test_everything_else_at_the_root_is_answered_as_before(request_head: bytes, status: int) -> None:
    async with served() as port:
        got, _ = await exchange(port, request_head)
        assert got == status
        await _still_serves(port)


async def test_without_the_demo_a_browser_at_the_root_gets_426_and_demo_is_404() -> None:
    async with served(demo=False) as port:
        status, body = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n\r\n")
        assert status == 426 and b"WebSocket" in body
        status, _ = await exchange(port, b"GET /demo/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 404


async def test_a_websocket_at_the_root_still_opens() -> None:
    from plait.client import connect

    async with served() as port, connect(f"ws://127.0.0.1:{port}/") as client:
        with trio.fail_after(10):
            async with client.join("r") as room:
                assert room is not None


def test_the_installed_package_holds_the_built_page() -> None:
    found = load_assets()
    assert {"index.html", "demo.js", "plait-client.js", "yjs.js", "style.css"} <= set(found)
    assert b'type="importmap"' in found["index.html"].body


@pytest.mark.slow
@pytest.mark.parametrize(("args", "env", "on"), [((), {}, True), (("--no-demo",), {}, False), ((), {"PLAIT_DEMO": "false"}, False)])
async def test_plait_serve_serves_the_demo_unless_told_not_to(args: tuple[str, ...], env: dict[str, str], on: bool) -> None:
    async with plait_serve("--port", "0", "--store", "memory", *args, env=env) as served_process:
        port = served_process.port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            page = await http.get("/demo/")
            root = await http.get("/", headers={"Accept": BROWSER_ACCEPT})
        if on:
            assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
            assert (root.status_code, root.headers["location"]) == (302, "demo/")
        else:
            assert (page.status_code, root.status_code) == (404, 426)


@pytest.mark.slow
@pytest.mark.parametrize("demo", [True, False])
async def test_the_serving_line_names_the_demo_page_when_it_is_on(demo: bool) -> None:
    async with plait_serve("--port", "0", "--store", "memory", *([] if demo else ["--no-demo"])) as served:
        line = served.line
        assert line.endswith("(Ctrl-C to stop)"), line
        assert (f", demo page at http://127.0.0.1:{served.port}/demo/ (Ctrl-C" in line) is demo, line


@pytest.mark.slow
def test_the_config_file_and_help_know_the_setting(tmp_path: Path) -> None:
    (tmp_path / "plait.toml").write_text("demo = false\n")
    command = [sys.executable, "-m", "plait.engine._cli", "serve"]
    printed = subprocess.run([*command, "--config", str(tmp_path / "plait.toml"), "--print-config"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    assert "demo = false" in printed
    bad_env = {**os.environ, "PLAIT_DEMO": "maybe"}
    bad = subprocess.run([*command, "--print-config"], env=bad_env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "PLAIT_DEMO" in bad.stderr
    helped = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "--demo, --no-demo" in helped and "/demo/" in helped


async def _still_serves(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        assert (await http.get("/demo/style.css")).status_code in (200, 404)
        assert (await http.get("/healthz")).status_code == 200
