"""The engine's port: each TCP connection's HTTP requests, routed to what serves them:
a WebSocket, the HTTP transports (spec §14), or a refusal."""

from __future__ import annotations

from ._exchange import Exchange as Exchange
from ._exchange import H11Exchange as H11Exchange
from ._exchange import Refusal as Refusal
from ._exchange import header as header
from ._router import Route as Route
from ._router import Router as Router
from ._server import RequestPace as RequestPace
from ._server import serve_connection as serve_connection
from ._sessions import HttpSessions as HttpSessions
