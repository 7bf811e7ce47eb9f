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
        if not (self._any or origin.lower() in self._allowed):
            raise Refusal(
                403, f"pages from {origin[:200]} may not use this server (plait serve --allow-origin)", as_json=True
            )
        return (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"))

    @staticmethod
    def _same_origin(origin: str, request: h11.Request) -> bool:
        host = header(request, b"host")
        scheme, _, rest = origin.partition("://")
        return host is not None and scheme in ("http", "https") and rest.lower() == host.lower()

    def preflight(self, request: h11.Request) -> Headers:
        """The answer's headers to an OPTIONS preflight (Refusal as `check`)."""
        return (
            *self.check(request),
            ("Access-Control-Allow-Methods", ALLOWED_METHODS),
            ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
            ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE),
        )
