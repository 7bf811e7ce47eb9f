"""`plait client URL ROOM`: join a room from a terminal, watch it, and talk to it.

Lines typed are chat events; commands start with "/":
    /append TEXT        append TEXT to the shared document's text
    /insert POS TEXT    insert TEXT at POS
    /delete POS COUNT   delete COUNT characters at POS
    /name NAME          set your presence name
    /cursor POS         move your cursor
    /quit               leave
Output lines start with a tag: [doc], [chat], [event], [presence], [cursor], [typing],
[connection], [error].
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

import trio

from ._client import connect
from ._errors import PlaitError
from ._room import ConnectionChanged, CursorsChanged, PresenceChanged, Room, TypingChanged


def _who(room: Room, session: str | None) -> str:
    entry = room.presence.get(session or "")
    if entry is None:
        return session or "server"
    return str(entry.state.get("name") or entry.identity.get("id") or session)


async def _show_changes(room: Room, out: TextIO) -> None:
    async for change in room.changes():
        match change:
            case PresenceChanged(joined=joined, left=left):
                for entry in joined:
                    print(f"[presence] {entry.state.get('name') or entry.identity.get('id')} joined", file=out)
                for sid in left:
                    print(f"[presence] {sid} left", file=out)
                names = sorted(_who(room, s) for s in room.presence)
                print(f"[presence] here: {', '.join(names) or 'nobody else'}", file=out)
            case CursorsChanged(moved=moved):
                for sid, pos in moved.items():
                    print(f"[cursor] {_who(room, sid)} at {pos}", file=out)
            case TypingChanged(sessions=sessions):
                typers = sorted(_who(room, s) for s in sessions)
                print(f"[typing] {', '.join(typers) + ' typing' if typers else 'nobody typing'}", file=out)
            case ConnectionChanged(state=state):
                print(f"[connection] {state}", file=out)
            case _:
                pass
        out.flush()


async def _show_events(room: Room, out: TextIO) -> None:
    async for event in room.events():
        if event.name == "chat" and isinstance(event.payload, dict):
            print(f"[chat] {event.user}: {event.payload.get('text')}", file=out)
        else:
            print(f"[event] #{event.seq} {event.name} {event.payload!r}", file=out)
        out.flush()


async def _show_document(room: Room, out: TextIO) -> None:
    last = None
    while True:
        changed = trio.Event()
        sub = room.doc.observe(lambda _, changed=changed: changed.set())
        text = str(room.text)
        if text != last:
            print(f"[doc] {text!r}", file=out)
            out.flush()
            last = text
        await changed.wait()
        room.doc.unobserve(sub)


async def _command(room: Room, line: str, out: TextIO) -> bool:
    """Run one input line; False means quit."""
    if not line.startswith("/"):
        await room.set_typing(False)
        await room.publish("chat", {"text": line})
        return True
    verb, _, rest = line[1:].partition(" ")
    text = room.text
    if verb == "quit":
        return False
    if verb == "append":
        text.insert(len(text), rest)
    elif verb == "insert":
        pos, _, what = rest.partition(" ")
        text.insert(min(int(pos), len(text)), what)
    elif verb == "delete":
        pos, _, count = rest.partition(" ")
        start = min(int(pos), len(text))
        del text[start : min(len(text), start + int(count))]
    elif verb == "name":
        await room.set_presence({"name": rest})
    elif verb == "cursor":
        await room.move_cursor(int(rest))
    else:
        print(f"[error] unknown command /{verb}", file=out)
        return True
    await room.flushed()
    return True


async def run(url: str, room_name: str, token: str | None, name: str | None, stdin: trio.abc.ReceiveStream, out: TextIO) -> None:
    async with connect(url, token) as client, client.join(room_name) as room:
        await room.synced()
        print(f"[connection] joined {room_name!r} as {client.session_id}", file=out)
        if name:
            await room.set_presence({"name": name})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_show_changes, room, out)
            nursery.start_soon(_show_events, room, out)
            nursery.start_soon(_show_document, room, out)
            buffer = b""
            while True:
                chunk = await stdin.receive_some(4096)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                keep_going = True
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    if not line:
                        continue
                    try:
                        keep_going = await _command(room, line, out)
                    except (PlaitError, ValueError) as exc:
                        print(f"[error] {exc}", file=out)
                        out.flush()
                    if not keep_going:
                        break
                if not keep_going:
                    break
            await room.flushed()
            nursery.cancel_scope.cancel()


def main(args: Any) -> int:
    async def go() -> None:
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        await run(args.url, args.room, args.token, args.name, stdin, sys.stdout)

    trio.run(go)
    return 0
