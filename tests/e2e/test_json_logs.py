"""`plait serve --log-format json`: every line of stderr is one JSON object, and the lines
about a session, a room or a user carry their ids. A real process, a real socket."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import pytest

from .serveprocess import plait_serve
from .test_metrics import client, join

pytestmark = pytest.mark.slow


async def test_json_logs_parse_line_by_line_and_carry_the_ids() -> None:
    async with plait_serve("--port", "0", "--store", "memory", "--log-format", "json", stderr=subprocess.PIPE) as served:
        async with client(served.port) as a:
            await join(a, "notes")
        served.process.send_signal(signal.SIGINT)
        assert await served.process.wait() == 0
        errors = b""
        assert served.process.stderr is not None
        while chunk := await served.process.stderr.receive_some(65536):
            errors += chunk
    records = [json.loads(line) for line in errors.decode().splitlines()]  # every line is one object
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in records)
    opened = next(r for r in records if r["message"].startswith("session ") and " open for " in r["message"])
    session_id = opened["message"].split()[1]
    assert opened["session"] == session_id
    assert opened["identity"] == opened["message"].rsplit(" ", 1)[1]
    closed = next(r for r in records if r["message"].startswith(f"session {session_id} closed"))
    assert closed["session"] == session_id
    live = next(r for r in records if r["message"].startswith("room 'notes' live"))
    assert live["room"] == "notes" and "session" not in live  # the room's task, not its first joiner's
    unloaded = next(r for r in records if r["message"].startswith("room 'notes' unloaded"))
    assert unloaded["room"] == "notes"
    listening = next(r for r in records if r["message"].startswith("listening on"))
    assert not {"session", "room", "identity"} & listening.keys()
