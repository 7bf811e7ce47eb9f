"""Transports: how a session's messages move (WebSocket, trio-websocket, HTTP requests, memory)."""

from __future__ import annotations

from ._base import AnsweringTransport as AnsweringTransport
from ._base import NowaitTransport as NowaitTransport
from ._base import PingTransport as PingTransport
from ._base import TextBytesTransport as TextBytesTransport
from ._base import Transport as Transport
from ._base import write_now as write_now
from ._http import Decoded as Decoded
from ._http import HttpTransport as HttpTransport
from ._http import InboundFull as InboundFull
from ._http import json_of_event as json_of_event
from ._http import sse_message as sse_message
from ._memory import MemoryTransport as MemoryTransport
from ._memory import memory_transport_pair as memory_transport_pair
from ._trio_websocket import WebSocketTransport as WebSocketTransport
from ._websocket import WebSocketStream as WebSocketStream
