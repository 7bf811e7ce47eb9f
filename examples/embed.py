import sys

import pycrdt
import trio
from plait.engine import Engine, Hooks, Unauthenticated
from plait.protocol import Access
from plait.storage import SQLiteStore

USERS = {"secret-ada": "ada", "secret-bob": "bob"}   # stands for your app's sessions or JWTs


class MyHooks(Hooks):
    async def authenticate(self, token, client):     # -> identity map with "id"
        if token not in USERS:
            raise Unauthenticated("unknown token")
        return {"id": USERS[token]}

    async def authorize(self, identity, room):       # -> Access.WRITE, Access.READ or None
        return Access.WRITE if identity["id"] == "ada" else Access.READ

    async def on_event(self, room, identity, name, payload):  # transform, or raise EventRejected
        return payload

    async def on_room_loaded(self, room, doc):       # seed a template into a new room
        text = doc.get("text", type=pycrdt.Text)
        if not str(text):
            text.insert(0, "Welcome!\n")

    async def on_room_stored(self, room, snapshot):  # e.g. mirror the document elsewhere
        print(f"{room}: {len(snapshot)} bytes stored", flush=True)


async def main(port: int) -> None:
    async with Engine(store=SQLiteStore("plait.db"), hooks=MyHooks()) as engine:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(engine.serve_websocket, "127.0.0.1", port)
            print(f"serving on ws://127.0.0.1:{port}/", flush=True)
            async with engine.room("notes") as room:    # server-side: no connection needed
                await room.publish("notice", {"text": "deployed"})


try:
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 8765)
except* KeyboardInterrupt:
    pass  # Ctrl-C: the engine has closed every connection and stored every room
