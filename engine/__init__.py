"""Plait engine: the Trio runtime (Engine, rooms, sessions, transports, CLI)."""

from __future__ import annotations

from ._config import EngineConfig as EngineConfig
from ._engine import Engine as Engine
from ._errors import RequestError as RequestError
from ._errors import RoomUnavailable as RoomUnavailable
from ._handle import RoomHandle as RoomHandle
from ._hooks import EventRejected as EventRejected
from ._hooks import Hooks as Hooks
from ._hooks import Identity as Identity
from ._hooks import Unauthenticated as Unauthenticated
from ._transport import MemoryTransport as MemoryTransport
from ._transport import Transport as Transport
from ._transport import TransportClosed as TransportClosed
from ._transport import WebSocketTransport as WebSocketTransport
from ._transport import memory_transport_pair as memory_transport_pair
