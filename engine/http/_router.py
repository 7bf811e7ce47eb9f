"""Which code answers a plain HTTP request on the engine's port, by its path.

A route is an exact path (`/healthz`, or `/` added as exact) or a prefix ending in `/` (`/v1/`,
`/api/`); an exact path wins, then the longest prefix that matches. A WebSocket upgrade never reaches a route (engine/http/_server.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import h11

from ._exchange import Exchange

Route = Callable[[Exchange, h11.Request], Awaitable[None]]
"""Answers one request: reads its body (or past it) and responds through the exchange, or
raises Refusal. What else it raises is contained by the server (500)."""


class Router:
    def __init__(self) -> None:
        self._exact: dict[str, Route] = {}
        self._prefixes: list[tuple[str, Route]] = []

    def add(self, path: str, route: Route, *, exact: bool = False) -> None:
        """Serve `path` (exact) or every path under it (when it ends in `/`, unless `exact`:
        the root `/` alone, say) with `route`.

        Raises:
            ValueError: the path does not start with `/`, or is taken.
        """
        if not path.startswith("/"):
            raise ValueError(f"a route's path starts with '/': {path!r}")
        if path in self._exact or any(prefix == path for prefix, _ in self._prefixes):
            raise ValueError(f"{path!r} is routed already")
        if path.endswith("/") and not exact:
            self._prefixes.append((path, route))
            self._prefixes.sort(key=lambda item: -len(item[0]))
        else:
            self._exact[path] = route

    def find(self, path: str) -> Route | None:
        route = self._exact.get(path)
        if route is not None:
            return route
        for prefix, route in self._prefixes:
            if path.startswith(prefix):
                return route
        return None
