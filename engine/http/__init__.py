"""The engine's port: each TCP connection's HTTP request, routed to what serves it."""

from __future__ import annotations

from ._server import serve_connection as serve_connection
