"""pycrdt-websocket, the peer issue 8 measures Plait against, served as its own tests and README
serve it: a `WebsocketServer` behind its `ASGIServer` on Hypercorn (asyncio). Rooms are named
by the URL path; it keeps documents in memory only (no store configured).

    python bench/peers/pycrdt_websocket_server.py PORT
"""

from __future__ import annotations

import asyncio
import logging
import sys

from hypercorn import Config
from hypercorn.asyncio import serve
from pycrdt.websocket import ASGIServer, WebsocketServer


async def main(port: int) -> None:
    websocket_server = WebsocketServer()
    app = ASGIServer(websocket_server)
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    async with websocket_server:
        await serve(app, config, mode="asgi")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(int(sys.argv[1])))
