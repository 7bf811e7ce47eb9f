"""JWT authentication end to end, real sockets on 127.0.0.1 and real time: the README's example
as written (`plait serve --jwt-secret-file`, examples/jwt_client.py), the SDK refreshing its
token over a WebSocket, and an HTTP session told on its event stream and refreshing by POST
(spec §5.9, §14). Tokens live a second or two, and the engine's heartbeat is short (its sweep,
which times expiry, runs every H/8), so that every wait is short; each is on an event, bounded.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import jwt
import pytest
import trio

from plait.client import ClientState, connect
from plait.engine import Engine, EngineConfig, JwtHooks
from plait.protocol import Refresh, TokenExpiring, decode_json

from .httpclients import HttpPeer, SseEvent, event_stream, http_client

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
SECRET = b"0123456789abcdef" * 4
H = 0.8  # the sweep that warns and closes runs every 0.1 s


def token(lifetime: float, sub: str = "ada") -> str:
    return jwt.encode({"sub": sub, "exp": time.time() + lifetime, "rooms": {"*": "write"}}, SECRET, algorithm="HS256")


@asynccontextmanager
async def jwt_server() -> AsyncIterator[int]:
    hooks = JwtHooks.from_secret(SECRET)
    async with Engine(hooks=hooks, config=EngineConfig(heartbeat=H)) as engine, trio.open_nursery() as nursery:
        yield await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        nursery.cancel_scope.cancel()


async def test_the_sdk_refreshes_its_token_over_a_real_socket() -> None:
    issued: list[float] = []
    enough = trio.Event()

    async def fresh() -> str:
        issued.append(time.time())
        if len(issued) >= 4:
            enough.set()
        return token(1.5)

    async with jwt_server() as port:
        async with connect(f"ws://127.0.0.1:{port}/", token=fresh) as client, client.join("r") as room:
            await room.synced()
            session = client.session_id
            with trio.fail_after(20):
                await enough.wait()  # three refreshes: the session outlived three tokens
            assert issued[-1] - issued[0] > 1.5
            assert client.state is ClientState.OPEN and client.session_id == session and client.attempts == 0
            room.text.insert(0, "still signed in")
            await room.flushed()


async def test_an_http_session_is_told_on_its_stream_and_refreshes_by_post() -> None:
    async with jwt_server() as port, http_client(port) as http:
        peer = HttpPeer(http)
        await peer.open(token(1.5))
        opened = time.time()
        async with event_stream(port, peer.url("events")) as (status, _, events):
            assert status == 200

            async def next_of(kind: str) -> SseEvent:
                with trio.fail_after(20):
                    async for event in events:
                        if event.type == kind:
                            return event
                raise AssertionError(f"the stream ended without {kind}")

            warning = await next_of("token_expiring")
            (frame,) = decode_json(warning.data)
            assert isinstance(frame, TokenExpiring) and 0 < frame.expires_in_ms <= 1500
            answers = await peer.send(Refresh(peer.next_ref(), token(3)))
            assert answers == [{"kind": "ack", "ref": 1, "value": None}]
            await next_of("ack")  # on the stream too, in order
            # The next warning is the fresh token's: the session outlived the first token.
            await next_of("token_expiring")
            assert time.time() - opened > 1.5
            # Not refreshed again: an error TOKEN_EXPIRED, then the stream's last word, close 4012.
            error = await next_of("error")
            assert json.loads(error.data)["code"] == 2011
            close = await next_of("close")
            assert json.loads(close.data)["code"] == 4012


async def test_an_http_session_needs_a_valid_token() -> None:
    async with jwt_server() as port, http_client(port) as http:
        for headers in ({}, {"Authorization": f"Bearer {token(-10)}"}, {"Authorization": "Bearer " + "x" * 5000}):
            response = await http.post("/v1/sessions", headers=headers)
            assert response.status_code == 401, response.text
            assert response.json()["code"] == 2002


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Authentication with JWTs") :]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    assert block is not None
    return block.group(1).strip().splitlines()


def test_the_readme_example_runs_as_written(tmp_path: Path) -> None:
    make_secret, serve, run_client = readme_commands()
    subprocess.run(make_secret, shell=True, cwd=tmp_path, check=True, timeout=30)
    venv = str(Path(sys.executable).parent) + "/"
    argv = [*shlex.split(serve.replace(".venv/bin/", venv)), "--port", "0", "--store", "memory"]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        match = re.search(r"serving on ws://127\.0\.0\.1:(\d+)/", first)
        assert match, first
        client_argv = shlex.split(run_client.replace(".venv/bin/python", sys.executable).replace(":8765/", f":{match.group(1)}/"))
        client_argv[1] = str(ROOT / client_argv[1])  # examples/jwt_client.py, from the repository
        result = subprocess.run(client_argv, capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "signed in" and lines[1].startswith("docs:plan is read-only:"), result.stdout
        # A token signed with another secret is refused for good: exit 1, the reason.
        (tmp_path / "other-secret").write_text("y" * 64)
        refused = subprocess.run([*client_argv[:3], "other-secret"], capture_output=True, text=True, cwd=tmp_path,
                                 timeout=60, check=False)
        assert refused.returncode == 1 and "4003" in refused.stderr, refused.stderr
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0 and "Traceback" not in err, err
