"""What a connection must pass before it is served as a WebSocket or an HTTP session: the
origin of the page that opened it (spec §2, §14.6), and how many connections its peer address
holds already (EngineConfig.max_connections_per_ip; spec §2, §14.5).

The address is the TCP peer's: behind a reverse proxy, the proxy's, for every client (so the
limit is off by default).
"""

from __future__ import annotations

import h11

from .._limits import UNCOUNTED, ConnectionCounts, Slot
from ._cors import Origins
from ._exchange import Refusal

RETRY_AFTER_FULL = "10"
"""Seconds an address over its connection limit is asked to wait (Retry-After)."""


class Admission:
    """What a connection must pass before it is a WebSocket (spec §2): its page's origin, and
    its address's count of open connections (shared with the HTTP sessions)."""

    def __init__(self, origins: Origins, per_ip: ConnectionCounts) -> None:
        self.origins = origins
        self.per_ip = per_ip

    def admit(self, request: h11.Request, address: str | None) -> Slot:
        """The place a WebSocket from the peer `address` (None: unknown, not counted) holds
        until it ends (release it in a `finally`).

        Raises:
            Refusal: 403 an origin not allowed; 429 the address holds its limit already.
        """
        self.origins.check_websocket(request)
        return take_slot(self.per_ip, address)


def take_slot(per_ip: ConnectionCounts, address: str | None, *, as_json: bool = False) -> Slot:
    """A place among the connections of the peer `address` (None: unknown, not counted).

    Raises:
        Refusal: 429 with Retry-After, the address holds max_connections_per_ip already.
    """
    if not per_ip.limit or address is None:  # no limit, or no socket (in memory; one already gone): not counted
        return UNCOUNTED
    slot = per_ip.take(address)
    if slot is None:
        reason = (f"{per_ip.limit} connections from {address} are open already (the server's max_connections_per_ip); "
                  "close one, or try again later")
        raise Refusal(429, reason, (("Retry-After", RETRY_AFTER_FULL),), as_json=as_json)
    return slot
