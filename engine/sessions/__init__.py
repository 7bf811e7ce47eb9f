"""Sessions: one per client, whatever carries it.

- _peer: Peer, what every session has: memberships, the outbox (_outbox), rate limits
  (_ratelimit), one way to close, the containment of everything it runs
- _native: Session, the native protocol (spec §4-§7)
- _yjs: YjsSession, the y-websocket protocol (spec §13); awareness <-> presence
- _services: SessionServices, what the engine gives every session
- _wire: how a native session encodes frames: msgpack, JSON, Server-Sent Events
- _sweep: SweepSchedule, which sessions the heartbeat sweep looks at, and when
"""

from __future__ import annotations

from ._native import Session as Session
from ._peer import Peer as Peer
from ._peer import check_detach as check_detach
from ._services import Flusher as Flusher
from ._services import SessionServices as SessionServices
from ._sweep import SWEEPS_PER_INTERVAL as SWEEPS_PER_INTERVAL
from ._sweep import SweepSchedule as SweepSchedule
from ._yjs import YjsSession as YjsSession
