"""`plait client URL ROOM`: join a room from a terminal, watch it, and talk to it.

Lines typed are chat messages; commands start with "/" (`/help` lists them):
    /append TEXT        append TEXT to the shared document's text
    /insert POS TEXT    insert TEXT at POS (0 is the start)
    /delete POS COUNT   delete COUNT characters at POS
    /name NAME          set your presence name
    /cursor POS|off     move your cursor, or hide it
    /typing [on|off]    show the others you are typing (it expires after a few seconds)
    /help               list the commands
    /quit               leave (so does the end of input)
Output lines start with a tag: [doc], [chat], [event], [presence], [cursor], [typing],
[connection], [error]. People are shown by their presence name (or user id), also after they
left. Each failed connection attempt is shown with its error and the delay before the next.

Exit status: 0 after /quit or the end of input; 1 when the server refuses the connection or
the room for good (the close code's meaning is printed).

Input is read from the start, connected or not. Lines typed before the room is joined run once
it is. /quit and the end of input end the client at once while it cannot connect (or once it
loses the connection): what was typed and not yet sent is dropped, as nothing can send it,
and the last line says what ("dropped: 1 message not sent, 2 document edits not saved").
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TextIO

import trio

from plait.protocol import RemoteProtocolError, check_room_name

from ._backoff import Backoff
from ._client import Client, ClientState, OpenTransport, _websocket_target, connect
from ._errors import ConnectionClosed, PlaitError, RequestFailed
from ._room import (
    Change,
    ConnectionChanged,
    CursorsChanged,
    DocumentReset,
    PresenceChanged,
    Room,
    RoomEvent,
    Subscription,
    TypingChanged,
)


class _Usage(Exception):
    """A command typed wrong: shown with the command's usage line."""


@dataclass(frozen=True)
class _Command:
    usage: str
    help: str
    run: Callable[[_Terminal, Room, str], Awaitable[None]]
    edits: bool = False
    """Waits until the server has the edit (and reports a refusal)."""


def _words(rest: str, names: list[str], *, text_last: bool = False) -> list[str]:
    """Split `rest` into one word per name; with `text_last` the last one is the rest of the
    line, spaces included."""
    parts = rest.split(" ", len(names) - 1) if text_last else rest.split()
    for i, name in enumerate(names):
        if i >= len(parts) or parts[i] == "":
            raise _Usage(f"{name} is missing")
    if len(parts) > len(names):
        raise _Usage(f"{len(parts) - len(names)} word(s) too many")
    return parts


def _position(name: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 15:
        raise _Usage(f"{name} must be a whole number up to 15 digits, not {value!r}")
    return int(value)


def _offset(text: str, position: int) -> int:
    """pycrdt 0.14 counts Text positions in UTF-8 bytes, and an insert at a byte inside a
    character makes an update no one can integrate (spec/notes/unicode.md): positions typed
    here count characters, like Python's, and become byte offsets at character boundaries."""
    return len(text[:position].encode())


async def _append(term: _Terminal, room: Room, rest: str) -> None:
    (what,) = _words(rest, ["TEXT"], text_last=True)
    room.text.insert(len(room.text), what)


async def _insert(term: _Terminal, room: Room, rest: str) -> None:
    pos, what = _words(rest, ["POS", "TEXT"], text_last=True)
    text = str(room.text)
    room.text.insert(_offset(text, min(_position("POS", pos), len(text))), what)


async def _delete(term: _Terminal, room: Room, rest: str) -> None:
    pos, count = _words(rest, ["POS", "COUNT"])
    text = str(room.text)
    start = min(_position("POS", pos), len(text))
    end = min(len(text), start + _position("COUNT", count))
    del room.text[_offset(text, start) : _offset(text, end)]


async def _name(term: _Terminal, room: Room, rest: str) -> None:
    (name,) = _words(rest, ["NAME"], text_last=True)
    term.my_name = name
    await room.set_presence({"name": name})


async def _cursor(term: _Terminal, room: Room, rest: str) -> None:
    (pos,) = _words(rest, ["POS"])
    await room.move_cursor(None if pos == "off" else min(_position("POS", pos), len(str(room.text))))


async def _typing(term: _Terminal, room: Room, rest: str) -> None:
    setting = rest.strip() or "on"
    if setting not in ("on", "off"):
        raise _Usage(f"say on or off, not {setting!r}")
    await room.set_typing(setting == "on")
    term.say("typing", "you are typing (/typing off to stop)" if setting == "on" else "you stopped typing")


async def _help(term: _Terminal, room: Room, rest: str) -> None:
    term.say("help", "plain lines are chat messages; commands:")
    for command in COMMANDS.values():
        term.say("help", f"  {command.usage:<18} {command.help}")


async def _quit(term: _Terminal, room: Room, rest: str) -> None:
    term.quitting = True


COMMANDS: dict[str, _Command] = {
    "append": _Command("/append TEXT", "append TEXT to the document's text", _append, edits=True),
    "insert": _Command("/insert POS TEXT", "insert TEXT at POS (0 is the start)", _insert, edits=True),
    "delete": _Command("/delete POS COUNT", "delete COUNT characters at POS", _delete, edits=True),
    "name": _Command("/name NAME", "set your presence name", _name),
    "cursor": _Command("/cursor POS|off", "move your cursor, or hide it", _cursor),
    "typing": _Command("/typing [on|off]", "show the others you are typing", _typing),
    "help": _Command("/help", "list the commands", _help),
    "quit": _Command("/quit", "leave", _quit),
}


class _Terminal:
    """One person at a terminal: prints what happens in the room, runs what they type."""

    def __init__(self, client: Client, out: TextIO, name: str | None) -> None:
        self.client = client
        self.out = out
        self.my_name = name
        self.names: dict[str, str] = {}
        """Session id -> the name shown for it; kept after the member left."""
        self.user_names: dict[str, str] = {}
        """Identity id -> the name shown for that person (their latest session's)."""
        self.status = 0
        self.quitting = False
        self.quit_typed = False
        self.input_done = trio.Event()
        """Set at the end of input, or once /quit was typed (nothing is read after it)."""
        self._doc_changed = trio.Event()
        self._typers: list[str] = []
        self.room: Room | None = None
        self.lines_waiting: Callable[[], int] = lambda: 0
        """How many typed lines have not been run yet."""

    def say(self, tag: str, text: str) -> None:
        # Others' names and messages are shown, never obeyed: control characters (escape
        # sequences, a newline that would forge a line) print as escapes.
        print(f"[{tag}] {text.translate(_VISIBLE)}", file=self.out)
        self.out.flush()

    def fail(self, error: BaseException) -> None:
        if self.status == 0:
            self.status = 1
            self.say("error", str(error))

    def _remember(self, session: str, name: str, identity: dict[str, object]) -> None:
        self.names[session] = name
        self.user_names[str(identity.get("id"))] = name

    def who(self, session: str | None, user: str | None = None) -> str:
        if session is not None and session == self.client.session_id:
            return self.my_name or user or "you"
        if session is not None and session in self.names:
            return self.names[session]
        return user or session or "server"

    # -- watching ---------------------------------------------------------------------------

    async def watch_connection(self, changes: Subscription[ConnectionChanged], stop: trio.CancelScope) -> None:
        async for change in changes:
            self._show_connection(change, stop)

    def _show_connection(self, change: ConnectionChanged, stop: trio.CancelScope) -> None:
        if change.state == "reconnecting":
            self.say("connection", f"attempt {change.attempt} failed: {change.error}; retrying in {change.delay:.1f} s")
        elif change.state == "open":
            self.say("connection", f"open (session {self.client.session_id})")
        elif change.state == "closed" and isinstance(change.error, ConnectionClosed) and change.error.code != 1000:
            self.fail(change.error)
            stop.cancel()

    async def show_changes(self, room: Room, changes: Subscription[Change]) -> None:
        async for change in changes:
            match change:
                case PresenceChanged(joined=joined, updated=updated, users_joined=arrived, users_left=gone):
                    # People, not sessions (spec §5.4): a second tab or a quick reconnect of
                    # someone already here is no news.
                    for entry in joined:
                        self._remember(entry.session, _name_of(entry.state, entry.identity, entry.session), entry.identity)
                    for sid in updated:
                        entry = room.presence[sid]
                        name = _name_of(entry.state, entry.identity, sid)
                        if self.names.get(sid) != name:
                            self.say("presence", f"{self.who(sid)} is now {name}")
                            self._remember(sid, name, entry.identity)
                    for user in arrived:
                        self.say("presence", f"{self.user_names.get(user, user)} joined")
                    for user in gone:
                        self.say("presence", f"{self.user_names.get(user, user)} left")
                    if arrived or gone:
                        names = sorted(self.user_names.get(u, u) for u in room.users())
                        self.say("presence", f"here: {', '.join(names) or 'nobody else'}")
                case CursorsChanged(moved=moved):
                    for sid, pos in moved.items():
                        if sid in room.presence:  # a member who left has no cursor to hide
                            self.say("cursor", f"{self.who(sid)} {'hid their cursor' if pos is None else f'at {pos}'}")
                case TypingChanged(sessions=sessions):
                    typers = sorted(self.who(s) for s in sessions)
                    if typers != self._typers:  # our own typing changes the set too; not news
                        self._typers = typers
                        self.say("typing", f"{', '.join(typers)} typing" if typers else "nobody typing")
                case DocumentReset(error=error):
                    self.say("doc", f"the server refused your edits ({error}); showing the room's text again")
                    self._doc_changed.set()
                case _:
                    pass

    async def show_events(self, room: Room, events: Subscription[RoomEvent]) -> None:
        async for event in events:
            if event.name == "chat" and isinstance(event.payload, dict):
                # The room's presence may already name the sender while its change waits in
                # the other task's queue (events replayed at a join come with the snapshot).
                sid = event.session
                entry = room.presence.get(sid) if sid is not None else None
                if sid is not None and entry is not None and sid not in self.names:
                    self._remember(sid, _name_of(entry.state, entry.identity, sid), entry.identity)
                self.say("chat", f"{self.who(event.session, event.user)}: {event.payload.get('text')}")
            else:
                self.say("event", f"#{event.seq} {event.name} {event.payload!r}")

    async def show_document(self, room: Room) -> None:
        last = None
        while True:
            self._doc_changed = changed = trio.Event()
            doc = room.doc  # a DocumentReset replaces it
            sub = doc.observe(lambda _: changed.set())  # noqa: B023 (unobserved before the next turn)
            try:
                text = str(room.text)
                if text != last:
                    self.say("doc", repr(text))
                    last = text
                await changed.wait()
            finally:
                doc.unobserve(sub)

    # -- typing -----------------------------------------------------------------------------

    async def command(self, room: Room, line: str) -> None:
        if not line.startswith("/"):
            await room.set_typing(False)
            await room.publish("chat", {"text": line})
            return
        verb, _, rest = line[1:].partition(" ")
        command = COMMANDS.get(verb)
        if command is None:
            self.say("error", f"unknown command /{verb} (/help lists the commands)")
            return
        try:
            await command.run(self, room, rest)
        except _Usage as exc:
            self.say("error", f"usage: {command.usage} ({exc})")
            return
        if command.edits:
            await room.flushed()

    async def read_lines(self, stdin: trio.abc.ReceiveStream, lines: trio.MemorySendChannel[str]) -> None:
        """Read what is typed from the start, whether connected or not, up to the end of input
        or /quit (which sets `input_done`)."""
        buffer = b""
        with lines:
            while True:
                chunk = await stdin.receive_some(4096)
                if not chunk:
                    self.input_done.set()
                    return
                buffer += chunk
                *raws, buffer = buffer.split(b"\n")
                for raw in raws:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    if not line:
                        continue
                    lines.send_nowait(line)  # unbounded: as much as a person types
                    if line.split(" ", 1)[0] == "/quit":
                        self.quit_typed = True
                        self.input_done.set()
                        return

    async def quit_when_offline(self, stop: trio.CancelScope) -> None:
        """After /quit or the end of input, end at once if the client is not connected, or as
        soon as it is not (an attempt under way fails within the handshake timeout): what is
        left to send could only wait for a server that may never come back."""
        await self.input_done.wait()
        try:
            # Still connecting: the attempt under way gets its chance (a script piped in
            # ends its input at once), and gives up within the handshake timeout.
            await self.client.wait_state(ClientState.RECONNECTING)
        except ConnectionClosed:
            return  # stopped for good: watch_connection reports it
        self.say("connection", f"not connected; quitting{self._dropped()}")
        stop.cancel()

    def _dropped(self) -> str:
        """What quitting now loses, said rather than lost silently."""
        lost = []
        waiting = self.lines_waiting() - (self.quit_typed and not self.quitting)  # not the /quit itself
        if waiting:
            lost.append(f"{waiting} typed line{'s' if waiting != 1 else ''} not run")
        pending = self.room.unacknowledged if self.room is not None else None
        if pending and pending.publishes:
            lost.append(f"{pending.publishes} message{'s' if pending.publishes != 1 else ''} not sent")
        if pending and pending.edits:
            lost.append(f"{pending.edits} document edit{'s' if pending.edits != 1 else ''} not saved")
        return f"; dropped: {', '.join(lost)}" if lost else ""

    async def read_commands(self, room: Room, lines: trio.MemoryReceiveChannel[str]) -> None:
        async for line in lines:
            try:
                await self.command(room, line)
            except ConnectionClosed as exc:
                if not exc.retryable:
                    raise
                self.say("error", f"{exc}; try again once connected")
            except PlaitError as exc:
                self.say("error", str(exc))
            if self.quitting:
                return

    async def session(self, room: Room, lines: trio.MemoryReceiveChannel[str]) -> None:
        # Subscribed before the join is answered: the presence snapshot and replayed events
        # come with it.
        changes, events = room.changes(), room.events()
        self.room = room
        await room.synced()
        mode = " (read-only)" if room.access == 1 else ""
        self.say("connection", f"joined {room.name!r} as {self.client.session_id}{mode}")
        if self.my_name:
            try:
                await room.set_presence({"name": self.my_name})
            except ConnectionClosed as exc:
                if not exc.retryable:
                    raise
                # the room sends it again when it rejoins
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.show_changes, room, changes)
            nursery.start_soon(self.show_events, room, events)
            nursery.start_soon(self.show_document, room)
            await self.read_commands(room, lines)
            try:
                await room.flushed()
            except RequestFailed as exc:
                self.say("error", str(exc))
            nursery.cancel_scope.cancel()


_VISIBLE: Final = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}
"""Control characters (C0, DEL, C1) as the escapes that show them."""


def _name_of(state: dict[str, Any], identity: dict[str, Any], session: str) -> str:
    return str(state.get("name") or identity.get("id") or session)


async def run(
    url: str,
    room_name: str,
    token: str | None,
    name: str | None,
    stdin: trio.abc.ReceiveStream,
    out: TextIO,
    *,
    open_transport: OpenTransport | None = None,
    backoff: Backoff | None = None,
) -> int:
    """The terminal client; returns the exit status. `open_transport` replaces `url` (tests)."""
    target = {"open_transport": open_transport} if open_transport is not None else {"url": url}
    async with connect(token=token, backoff=backoff, **target) as client:  # type: ignore[arg-type]
        changes = client.changes()  # before the first attempt can fail unseen
        term = _Terminal(client, out, name)
        term.say("connection", f"connecting to {url}")
        send_lines, lines = trio.open_memory_channel[str](math.inf)
        term.lines_waiting = lambda: lines.statistics().current_buffer_used
        async with trio.open_nursery() as nursery:
            nursery.start_soon(term.watch_connection, changes, nursery.cancel_scope)
            nursery.start_soon(term.read_lines, stdin, send_lines)
            nursery.start_soon(term.quit_when_offline, nursery.cancel_scope)
            try:
                async with client.join(room_name) as room:
                    await term.session(room, lines)
            except (ConnectionClosed, RequestFailed) as exc:
                term.fail(exc)
            nursery.cancel_scope.cancel()
    return term.status


def terminal_main(args: Any) -> int:
    """`plait client URL ROOM`: the terminal client (this module's docstring), run on stdin and
    stdout until /quit or the end of input. `plait` (engine/_cli.py) parses the command line.

    Args:
        args: the parsed command line: `url` (ws:// or wss://), `room`, `token` and `name`
            (each a str or None).

    Returns:
        The exit status: 0 after /quit or the end of input, 1 when the server refuses the
        connection or the room for good, 2 for a URL the client cannot open or a room name
        no server takes (spec §5.2), found before connecting.
    """
    try:
        _websocket_target(args.url)
        if args.name is not None:
            args.name.encode()  # a byte the terminal could not decode is a lone surrogate here
        check_room_name(args.room)
    except ValueError as exc:  # UnicodeEncodeError included
        what = "--name is not valid text" if isinstance(exc, UnicodeError) else str(exc)
        print(f"[error] {what}", file=sys.stdout)
        return 2
    except RemoteProtocolError as exc:
        print(f"[error] invalid room name: {exc.message}", file=sys.stdout)
        return 2

    async def go() -> int:
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        return await run(args.url, args.room, args.token, args.name, stdin, sys.stdout)

    return trio.run(go)
