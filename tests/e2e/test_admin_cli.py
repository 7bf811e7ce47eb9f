"""`plait serve` with an API key, the README's curl examples of the server API as written, and
`plait admin` (spec/api.md): real processes on 127.0.0.1, every wait bounded."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from plait.client import connect

from .serveprocess import plait_serve

pytestmark = pytest.mark.slow

KEY = "readme-key-0123456789abcdef"
README = Path(__file__).parents[2] / "README.md"
ALICE_KEY = "alice-anonymous-key-0123456789"
ALICE = "anon-" + hashlib.sha256(ALICE_KEY.encode()).hexdigest()[:12]
"""The identity the default hooks give that client (Hooks.authenticate); the README says `alice`."""


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[int]:
    """`plait serve` taking its key from PLAIT_API_KEY, as the README shows; its port."""
    async with plait_serve("--port", "0", "--data", str(tmp_path), "--store", "memory", env={"PLAIT_API_KEY": KEY}) as served:
        yield served.port


def readme_api_blocks(port: int) -> list[str]:
    readme = README.read_text()
    start = readme.index("## Operate it: the server API")
    section = readme[start : readme.index("\n## ", start)]
    return [b.replace("127.0.0.1:8765", f"127.0.0.1:{port}") for b in re.findall(r"```sh\n(.*?)```", section, re.S)]


async def admin(port: int, *args: str, key: str = KEY) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PLAIT_API_KEY": key, "PLAIT_URL": f"http://127.0.0.1:{port}"}
    with trio.fail_after(30):
        return await trio.run_process(
            [sys.executable, "-m", "plait.engine._cli", "admin", *args], capture_stdout=True, capture_stderr=True, check=False, env=env
        )


async def test_the_readmes_server_api_examples_work_as_written(server: int) -> None:
    start, calls = readme_api_blocks(server)
    assert "PLAIT_API_KEY" in start and "plait serve" in start  # the fixture runs it so, on a free port
    assert shutil.which("curl"), "the README's HTTP examples need curl (.ci/run installs it)"
    async with connect(f"ws://127.0.0.1:{server}/", client_info={"anonymous_key": ALICE_KEY}) as alice:
        async with alice.join("notes") as room:
            room.text.insert(0, "hello")
            await room.flushed()
            done = await trio.run_process(
                ["bash", "-e", "-c", calls.replace("/alice", "/" + ALICE)],
                capture_stdout=True,
                env={**os.environ, "PLAIT_API_KEY": KEY},
            )
            answers = [json.loads(line) for line in done.stdout.decode().replace("}{", "}\n{").splitlines()]
            published, presence, document, access, kicked = answers
            assert published == {"room": "notes", "seq": 1}
            assert [p["identity"]["id"] for p in presence["presence"]] == [ALICE]
            assert document["document"] == {"text": "hello"}
            assert access["changed"] == 1 and room.access == 1
            assert kicked["disconnected"] == 1
            with trio.fail_after(5):
                await alice.wait_state("closed")
            assert alice.closed_error is not None and alice.closed_error.code == 4013


async def test_plait_admin_does_what_the_api_does_and_refusals_are_one_line(server: int) -> None:
    published = await admin(server, "publish", "notes", "chat", '{"text": "hi"}', "--key", "k1")
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout) == {"room": "notes", "seq": 1}
    again = await admin(server, "publish", "notes", "chat", '{"text": "hi"}', "--key", "k1")
    assert json.loads(again.stdout)["seq"] == 1
    history = json.loads((await admin(server, "history", "notes")).stdout)
    assert [e["payload"] for e in history["events"]] == [{"text": "hi"}]
    rooms = json.loads((await admin(server, "rooms", "--stored")).stdout)
    assert [r["name"] for r in rooms["rooms"]] == ["notes"]
    access = json.loads((await admin(server, "access", "notes", "mallory", "none")).stdout)
    assert access == {"room": "notes", "user": "mallory", "access": "none", "changed": 0}
    assert json.loads((await admin(server, "access", "notes", "mallory", "default")).stdout)["cleared"] is True
    assert json.loads((await admin(server, "kick", "--user", "nobody")).stdout)["disconnected"] == 0
    assert json.loads((await admin(server, "delete", "notes")).stdout)["deleted"] is True

    missing = await admin(server, "room", "notes")
    assert missing.returncode == 1
    assert missing.stderr.decode().strip() == "plait admin: 404 no room 'notes': none is loaded or stored (NOT_FOUND)"
    wrong = await admin(server, "rooms", key="a-wrong-key-but-long-enough")
    assert wrong.returncode == 1 and "401 wrong API key (UNAUTHENTICATED)" in wrong.stderr.decode()
    bad_json = await admin(server, "publish", "notes", "chat", "{oops")
    assert bad_json.returncode == 1 and "is not JSON" in bad_json.stderr.decode()
    assert len(bad_json.stderr.decode().splitlines()) == 1


async def test_plait_admin_says_when_it_cannot_reach_the_server(tmp_path: Path) -> None:
    done = await admin(1, "rooms")  # nothing listens on port 1
    assert done.returncode == 1
    assert "cannot reach the server" in done.stderr.decode() and "Traceback" not in done.stderr.decode()


async def test_plait_serve_refuses_a_short_api_key(tmp_path: Path) -> None:
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "plait.engine._cli", "serve", "--api-key", "short", "--data", str(tmp_path)],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert done.returncode == 2
    assert done.stderr.decode().startswith("plait serve: argument --api-key: an API key is 16 or more")
