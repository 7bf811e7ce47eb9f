import sys

import trio
from plait.client import connect

URL = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8765/"
TOKEN = sys.argv[2] if len(sys.argv) > 2 else None   # what the server's authenticate hook checks


async def main() -> None:
    async with connect(URL, TOKEN) as client:
        async with client.join("notes") as room:
            await room.synced()                      # the document holds the server's state
            room.text.insert(0, "hello ")            # room.doc is a pycrdt.Doc; edits are sent
            await room.flushed()                     # ...and acknowledged once durable
            await room.set_presence({"name": "ada"})
            events = room.events()                   # from now on, in order, across reconnects
            seq = await room.publish("chat", {"text": "hi"})
            async for event in events:
                print(event.name, event.payload)     # chat {'text': 'hi'}
                if event.seq == seq:
                    break
            print(str(room.text))


trio.run(main)
