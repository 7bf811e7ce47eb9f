"""Which web pages may use the HTTP transports (CORS, spec §14.6).

A request without an `Origin` (curl, a backend, a same-origin `EventSource` in some browsers)
is not a cross-origin browser request: nothing to check. A page of the server's own origin
may. Any other origin must be in the allowed list (`plait serve --allow-origin`; `*` allows
every origin); a request from another is refused with 403 and a reason, its preflight too.
Credentials are not used (tokens travel in `Authorization` or the query, keys in the query),
so `Access-Control-Allow-Credentials` is never sent.
"""

from __future__ import annotations

import h11

from ._exchange import Headers, Refusal, header

ALLOWED_METHODS = "GET, POST, DELETE"
ALLOWED_HEADERS = "Authorization, Content-Type, Last-Event-ID, Plait-Key"
PREFLIGHT_MAX_AGE = "600"


class Origins:
    """The allowed origins: exact `scheme://host[:port]` strings, or `*`."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self._any = "*" in allowed
        self._allowed = frozenset(o.rstrip("/").lower() for o in allowed if o != "*")

    def check(self, request: h11.Request) -> Headers:
        """The CORS headers for an answer to `request`.

        Raises:
            Refusal: 403, a browser request from an origin not allowed.
        """
        origin = header(request, b"origin")
        if origin is None or self._same_origin(origin, request):
            return ()
        if not self._allows(origin):
            raise Refusal(
                403, f"pages from {origin[:200]} may not use this server (plait serve --allow-origin)", as_json=True
            )
        return (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"))

    def check_websocket(self, request: h11.Request) -> None:
        """spec §2: a WebSocket upgrade from a page of another origin is refused unless that
        origin is allowed. A browser opens a WebSocket to any site with the user's cookies
        and no CORS check of its own (cross-site WebSocket hijacking); `Origin` is the one
        thing a page cannot forge.

        Raises:
            Refusal: 403 (plain text), a browser's page from an origin not allowed.
        """
        origin = header(request, b"origin")
        if origin is None or self._same_origin(origin, request) or self._allows(origin):
            return
        raise Refusal(403, f"pages from {origin[:200]} may not open a WebSocket to this server (plait serve --allow-origin)")

    def _allows(self, origin: str) -> bool:
        return self._any or origin.lower() in self._allowed

    @staticmethod
    def _same_origin(origin: str, request: h11.Request) -> bool:
        """Whether `origin` names the host the request was sent to: its `Host`, or the
        `X-Forwarded-Host` a reverse proxy that rewrote `Host` adds. A page cannot set the
        latter on a WebSocket, nor on a fetch without a preflight, which is checked without it."""
        scheme, _, rest = origin.partition("://")
        if scheme not in ("http", "https"):
            return False
        rest = rest.lower()
        host = header(request, b"host")
        if host is not None and rest == host.lower():
            return True
        forwarded = header(request, b"x-forwarded-host")
        return forwarded is not None and rest == forwarded.partition(",")[0].strip().lower()

    def preflight(self, request: h11.Request) -> Headers:
        """The answer's headers to an OPTIONS preflight (Refusal as `check`)."""
        return (
            *self.check(request),
            ("Access-Control-Allow-Methods", ALLOWED_METHODS),
            ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
            ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE),
        )
