"""The demo page on `plait serve`'s port: `/demo/` serves the files of engine/demo/ (built from
js/demo/ by js/build.mjs, shipped as package data of plait.engine), and a browser's plain GET
of `/` is sent there.

- `/demo/NAME`: GET and HEAD of one of the demo's files (`/demo/` is index.html), with its
  Content-Type, an ETag (an `If-None-Match` that names it gets 304) and `Cache-Control:
  no-cache` (a browser asks again, cheaply, after a server upgrade), and
  `Access-Control-Allow-Origin: *`, so that a page of any origin can import the SDK and yjs
  from here (README, "In the browser"). Any other path under
  `/demo/` is 404: a name is looked up among the files read at start, never on the file
  system, so `..`, encoded dots or slashes, NUL or a long path can only miss. Another method
  is 405.
- `/demo`: 302 to `demo/`.
- `/`: a GET whose Accept names text/html (a browser's address bar) is 302 to `demo/`, the
  query kept (`/?room=x` opens room x); every other request at `/` is answered as before (426
  Upgrade Required, or 405; spec/protocol.md §2). A WebSocket upgrade never reaches a route.

Redirects are relative (`demo/`), so they hold behind a proxy that serves Plait under a prefix.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

import h11

from ._exchange import Exchange, Refusal, header
from ._health import check_method
from ._router import Router

PREFIX: Final = "/demo/"
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
"""The kinds of file the demo is made of; a file of another kind in the folder is not served."""
INDEX: Final = "index.html"
MAX_QUERY: Final = 1024
"""A longer query is not carried into the redirect (a room name is at most 256 characters)."""
SAFE_QUERY: Final = re.compile(r"[A-Za-z0-9._~%&=+\-]*")
"""What of a query is carried into the redirect's Location as it is: anything else (quotes,
spaces, control characters) is dropped rather than escaped, so that the header is always valid."""


class DemoMissing(Exception):
    """The demo's files are not in the installed package (a source tree whose js/build.mjs
    never ran, or a package built without its data)."""


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The demo's files by name, from the package data of plait.engine.

    Raises:
        DemoMissing: there is no engine/demo/index.html.
    """
    folder = resources.files("plait.engine").joinpath("demo")
    assets: dict[str, Asset] = {}
    if folder.is_dir():
        for entry in folder.iterdir():
            content_type = CONTENT_TYPES.get("." + entry.name.rpartition(".")[2])
            if content_type is None or not entry.is_file():
                continue
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            assets[entry.name] = Asset(body, content_type, etag)
    if INDEX not in assets:
        raise DemoMissing(f"the demo page's files are not in the installed package ({folder}); build them with node js/build.mjs")
    return assets


class Demo:
    """The routes: `/demo/` (the files), `/demo` and `/` (redirects).

    Args:
        assets: the files by name (`load_assets()`).
    """

    def __init__(self, assets: dict[str, Asset]) -> None:
        self._assets = assets

    def add_to(self, router: Router) -> None:
        router.add(PREFIX, self.file)
        router.add(PREFIX.rstrip("/"), self.bare)
        router.add("/", self.root, exact=True)

    async def file(self, ex: Exchange, request: h11.Request) -> None:
        await check_method(ex, request)
        path = request.target.partition(b"?")[0].partition(b"#")[0]
        name = path[len(PREFIX) :].decode("ascii", "replace") or INDEX
        asset = self._assets.get(name)
        if asset is None:
            raise Refusal(404, f"the demo has no such file; its page is at {PREFIX}")
        # Any page may load them (module scripts from another origin need CORS): they are the
        # same public files for everyone, sent without cookies.
        headers = (("ETag", asset.etag), ("Cache-Control", "no-cache"), ("Access-Control-Allow-Origin", "*"))
        if asset.etag in _tags(header(request, b"if-none-match")):
            await ex.respond(304, b"", asset.content_type, headers)
        else:
            await ex.respond(200, asset.body, asset.content_type, headers)

    async def bare(self, ex: Exchange, request: h11.Request) -> None:
        await check_method(ex, request)
        await _redirect(ex, "demo/", request)

    async def root(self, ex: Exchange, request: h11.Request) -> None:
        from ._server import plain_refusal  # the server module imports the routes' modules

        accept = (header(request, b"accept") or "").lower()
        if request.method != b"GET" or "text/html" not in accept:
            raise plain_refusal("/", request.method)
        await ex.body(0)  # a GET has none; a body is 413
        await _redirect(ex, "demo/", request)


async def _redirect(ex: Exchange, location: str, request: h11.Request) -> None:
    query = request.target.partition(b"?")[2].partition(b"#")[0].decode("ascii", "replace")
    if query and len(query) <= MAX_QUERY and SAFE_QUERY.fullmatch(query):
        location += "?" + query
    body = f"The demo page is at {location}\n".encode()
    await ex.respond(302, body, "text/plain; charset=utf-8", (("Location", location),))


def _tags(value: str | None) -> set[str]:
    """The entity tags an If-None-Match names (weak ones compare as strong: RFC 9110 §13.1.2)."""
    if not value:
        return set()
    return {tag.strip().removeprefix("W/") for tag in value.split(",")}
