"""Plait client SDK for Trio: reconnecting, resuming, offline-tolerant."""

from __future__ import annotations

from ._backoff import Backoff as Backoff
from ._cli import terminal_main as terminal_main
from ._client import Client as Client
from ._client import ClientState as ClientState
from ._client import connect as connect
from ._errors import *  # noqa: F403  (one typed error per protocol code)
from ._errors import ConnectionClosed as ConnectionClosed
from ._errors import PlaitError as PlaitError
from ._errors import RequestFailed as RequestFailed
from ._room import AccessChange as AccessChange
from ._room import Change as Change
from ._room import ConnectionChanged as ConnectionChanged
from ._room import CursorsChanged as CursorsChanged
from ._room import DocumentReset as DocumentReset
from ._room import HistoryGap as HistoryGap
from ._room import PresenceChanged as PresenceChanged
from ._room import Room as Room
from ._room import RoomEnded as RoomEnded
from ._room import RoomEvent as RoomEvent
from ._room import TypingChanged as TypingChanged
from ._room import Unacknowledged as Unacknowledged
