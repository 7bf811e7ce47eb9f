"""Plait engine: the Trio runtime (Engine, rooms, sessions, transports, CLI)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait.protocol import TransportClosed as TransportClosed

from ._api import serve_api as serve_api
from ._config import EngineConfig as EngineConfig
from ._engine import Engine as Engine
from ._errors import RequestError as RequestError
from ._errors import RoomUnavailable as RoomUnavailable
from ._handle import History as History
from ._handle import HistoryEvent as HistoryEvent
from ._handle import RoomHandle as RoomHandle
from ._hooks import EventRejected as EventRejected
from ._hooks import Hooks as Hooks
from ._hooks import Identity as Identity
from ._hooks import Unauthenticated as Unauthenticated
from ._metrics import Gauges as Gauges
from ._metrics import Metrics as Metrics
from ._metrics import NoMetrics as NoMetrics
from ._operations import Membership as Membership
from ._operations import RoomInfo as RoomInfo
from ._operations import SessionInfo as SessionInfo
from ._prometheus import PrometheusMetrics as PrometheusMetrics
from .transports import MemoryTransport as MemoryTransport
from .transports import Transport as Transport
from .transports import WebSocketTransport as WebSocketTransport
from .transports import memory_transport_pair as memory_transport_pair

if TYPE_CHECKING:
    from ._jwt import JwtHooks as JwtHooks
    from ._jwt import JwtKeyError as JwtKeyError


def __getattr__(name: str) -> object:
    # JWT auth loads PyJWT and cryptography (~8 MiB): only for those who use it.
    if name in ("JwtHooks", "JwtKeyError"):
        from . import _jwt

        return getattr(_jwt, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
