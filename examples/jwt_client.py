import sys
import time

import jwt  # PyJWT: comes with plait
import trio
from plait.client import Forbidden, connect

URL = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8765/"
SECRET = open(sys.argv[2] if len(sys.argv) > 2 else "jwt-secret", "rb").read().rstrip(b"\r\n")


def fresh_token() -> str:  # your login service's job; called at each connection and refresh
    claims = {
        "sub": "ada",                                   # the user: identity "id"
        "name": "Ada Lovelace",                         # shown in presence
        "aud": "plait",                                 # --jwt-audience plait
        "exp": int(time.time()) + 300,                  # required; refreshed before it passes
        "rooms": {"notes": "write", "docs:*": "read"},  # no rooms claim: no room at all
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def main() -> None:
    async with connect(URL, token=fresh_token) as client:
        async with client.join("notes") as room:
            await room.synced()
            room.text.insert(0, "signed in")
            await room.flushed()
            print(str(room.text))
        async with client.join("docs:plan") as room:
            await room.synced()
            room.text.insert(0, "an edit")
            try:
                await room.flushed()
            except Forbidden as exc:
                print("docs:plan is read-only:", exc)


trio.run(main)
