"""What Yjs clients see of a room's presence: awareness client ids, clocks and encoded states
(spec §13).

Yjs keeps one awareness state per client id and accepts a state only with a clock above the
last it saw for that id (or a null state at the same clock). So:

- A native session gets a client id derived from its session id; the server counts its clock
  from 1 and moves it on at every change of its presence or cursor, and when it is renewed.
- A Yjs session has no awareness entry until it speaks for itself: its first awareness
  message claims a client id, which is refused while another connected session of the room
  holds it (a client speaks only for itself). A session that disconnected gives its id up to
  a new session of the same identity (a quick reconnect), and to anyone once its presence has
  left. A Yjs session's clock is its client's own, and must increase; the server adds an
  offset when the id was last shown at a clock the client has not passed (a client that
  reconnects keeps its clock, but its null state already went out at that clock, and Yjs
  would ignore it until its next renewal, 15 s later).
- A session whose presence left is shown once as a null state at its last clock, as the
  y-protocols reference server does, then everything kept for it is forgotten.

Pure bookkeeping, like PresenceBook: the room calls it on the Trio thread.
"""

from __future__ import annotations

import zlib

from plait.protocol import AwarenessEntry

MAX_CLOCK = 2**53 - 1  # lib0 varuints are JavaScript numbers
RETIRED_IDS = 1024
"""Client ids whose last clock a room remembers after their session went (oldest forgotten)."""


class Awareness:
    __slots__ = ("_clients", "_holders", "_native", "_hidden", "_entries", "_retired")

    def __init__(self) -> None:
        self._clients: dict[str, list[int]] = {}
        """Session id -> [awareness client id, clock shown, offset added to the client's]."""
        self._holders: dict[int, str] = {}
        """Client id -> the session that holds it (a Yjs session's claim, a native's derived id)."""
        self._native: set[str] = set()
        self._hidden: set[str] = set()
        self._entries: dict[str, AwarenessEntry] = {}
        """Encoded entries until the session's state or clock changes: every Yjs member of a
        busy room asks for the same entries each tick."""
        self._retired: dict[int, int] = {}
        """Client id -> the last clock shown for it, after its Yjs session went."""

    def __len__(self) -> int:
        return len(self._clients)

    def add_native(self, session: str) -> None:
        client_id = zlib.crc32(session.encode())
        self._clients[session] = [client_id, 1, 0]
        self._holders[client_id] = session  # a Yjs client echoing this entry does not get the id
        self._native.add(session)

    def changed(self, session: str) -> None:
        """The session's presence or cursor changed: a native session's clock moves on."""
        self._entries.pop(session, None)
        if session in self._native:
            self._clients[session][1] += 1

    def renew(self) -> None:
        """Yjs clients drop states not renewed within 30 s: move every native clock on."""
        for session in self._native:
            self._entries.pop(session, None)
            self._clients[session][1] += 1

    def holder(self, client_id: int) -> str | None:
        return self._holders.get(client_id)

    def bound(self, session: str) -> bool:
        return session in self._clients

    def bound_id(self, session: str) -> int | None:
        """The client id a Yjs session speaks for, once it has claimed one."""
        held = self._clients.get(session)
        return held[0] if held is not None else None

    def claim(self, session: str, client_id: int, clock: int, hidden: bool) -> bool:
        """A Yjs session's awareness entry for `client_id` at `clock` (`hidden`: a null
        state). True if it is the session's own and moves its clock on; False to ignore it.

        A session is bound to the first id it claims with a state (y-websocket sends its own
        state first; a null is a removal, never a claim); an id held by another session is
        refused (the caller releases a holder that may be replaced). y-websocket clients echo
        the entries of others back to the server: those are refused here too."""
        held = self._clients.get(session)
        if held is not None:
            offset = held[2]
            if held[0] != client_id or clock + offset <= held[1]:
                return False  # not its id, or a clock Yjs clients would ignore anyway
        elif hidden or self._holders.get(client_id, session) != session:
            return False
        else:
            shown = self._retired.pop(client_id, None)
            offset = shown - clock + 1 if shown is not None and shown >= clock else 0
        if clock + offset > MAX_CLOCK:
            return False
        self._hold(session, client_id, clock + offset, offset, hidden)
        return True

    def adopt(self, session: str, client_id: int, clock: int, hidden: bool) -> bool:
        """A peer process's Yjs session's claim, at the clock its owner shows (the owner
        checked it and added any offset). False, and nothing changes, if another session
        holds the id (the caller releases a holder that may be replaced) or the session
        holds another id or showed a later clock. True if it changed what Yjs clients see."""
        held = self._clients.get(session)
        if self._holders.get(client_id, session) != session or (held is not None and (held[0] != client_id or clock < held[1])):
            return False
        if held is not None and clock == held[1] and hidden == (session in self._hidden):
            return False  # the same claim again (a full state)
        self._retired.pop(client_id, None)
        self._hold(session, client_id, clock, 0, hidden)
        return True

    def _hold(self, session: str, client_id: int, shown: int, offset: int, hidden: bool) -> None:
        """`session` holds `client_id`, showing clock `shown` (its client's plus `offset`)."""
        self._holders[client_id] = session
        self._clients[session] = [client_id, shown, offset]
        self._entries.pop(session, None)
        if hidden:
            self._hidden.add(session)
        else:
            self._hidden.discard(session)

    def is_native(self, session: str) -> bool:
        return session in self._native

    def shown(self, session: str) -> tuple[int, int, bool] | None:
        """A Yjs session's (client id, clock shown, hidden), once it has claimed one."""
        held = self._clients.get(session)
        if held is None or session in self._native:
            return None
        return held[0], held[1], session in self._hidden

    def release(self, session: str) -> int | None:
        """Forget everything kept for a session, without announcing anything: its presence
        left and its null state went out, or its client id now belongs to a new session (a
        reconnect), whose states Yjs clients see under the same id. Returns the client id it
        held, if any."""
        client = self._clients.pop(session, None)
        native = session in self._native
        self._native.discard(session)
        self._hidden.discard(session)
        self._entries.pop(session, None)
        if client is not None and self._holders.get(client[0]) == session:
            del self._holders[client[0]]
            if not native:  # a native session's id is never used again
                self._retire(client[0], client[1])
            return client[0]
        return None

    def _retire(self, client_id: int, clock: int) -> None:
        if len(self._retired) >= RETIRED_IDS:
            del self._retired[next(iter(self._retired))]
        self._retired[client_id] = clock

    def cached(self, session: str) -> AwarenessEntry | None:
        return self._entries.get(session)

    def entry(self, session: str, state_json: str | None) -> AwarenessEntry | None:
        """The entry Yjs clients see for `session`, given its state as JSON (None: its
        presence left), or None when it has no awareness (a Yjs client that has not spoken).
        Kept until the session's next change."""
        client = self._clients.get(session)
        if client is None:
            return None
        if session in self._hidden:
            state_json = None
        entry = AwarenessEntry(client[0], client[1], "null" if state_json is None else state_json)
        self._entries[session] = entry
        return entry
