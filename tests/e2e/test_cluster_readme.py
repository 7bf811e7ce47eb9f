"""The README's three-process cluster behind HAProxy, run as written (its commands and its
haproxy.cfg, with free ports): clients through the balancer keep editing while one process is
killed with -9; they reconnect to the others, and every acknowledged edit is kept."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import psutil
import pytest
import trio

from plait.client import connect
from tests.servers import PostgresServer, RedisServer, free_port

from .serveprocess import Served, plait_serve

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
EDITS = 30


def readme_section() -> tuple[list[str], str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Several processes") :]
    commands = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    config = re.search(r"```text\n(.*?)```", section, flags=re.S)
    assert commands is not None and config is not None
    return commands.group(1).strip().splitlines(), config.group(1)


def connections_to(port: int) -> int:
    return sum(1 for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.status == "ESTABLISHED")


async def http_session_through(port: int) -> None:
    """An HTTP session (SSE/long-polling, spec §14) opened, joined and published through the
    balancer: every request reaches the process that holds it."""
    # A new connection per request, as a browser's requests may be: each is balanced anew.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=httpx.Limits(max_keepalive_connections=0)) as http:
        opened = (await http.post("/v1/sessions")).json()
        join = {"kind": "join", "ref": 1, "room": "notes", "state_vector": None, "since": None, "epoch": None}
        answers = [await http.post(opened["frames"], json=join)]
        for ref in range(2, 8):
            publish = {"kind": "publish", "channel": 1, "ref": ref, "name": "chat", "payload": ref, "key": None}
            answers.append(await http.post(opened["frames"], json=publish))
        assert [a.status_code for a in answers] == [200] * 7, [a.text for a in answers]


@asynccontextmanager
async def haproxy(config: str, folder: Path) -> AsyncIterator[trio.Process]:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(binary):
        pytest.fail("HAProxy is not installed: apt-get install haproxy (.ci/run does)", pytrace=False)
    path = folder / "plait-haproxy.cfg"
    path.write_text(config)
    process = await trio.lowlevel.open_process([binary, "-f", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        process.kill()
        await process.wait()


async def until_served(port: int) -> None:
    """Until a WebSocket handshake through the balancer gets the server's answer."""
    for _ in range(200):
        try:
            async with connect(f"ws://127.0.0.1:{port}/") as client, client.join("probe") as room:
                await room.synced()
                return
        except Exception:  # the balancer is still starting, or its checks have not passed yet
            await trio.sleep(0.1)
    raise AssertionError("the balancer never served")


async def editor(url: str, name: str, acked: list[str], stop: trio.Event) -> None:
    async with connect(url) as client, client.join("notes") as room:
        await room.synced()
        for n in range(EDITS):
            room.text.insert(len(room.text), f"<{name}{n}>")
            with trio.fail_after(30):
                await room.flushed()  # through a kill and a reconnect to another process
            acked.append(f"<{name}{n}>")
            if n == EDITS // 3:
                stop.set()


async def test_the_readme_cluster_keeps_every_acknowledged_edit_when_a_process_is_killed(
    redis: RedisServer, postgres: PostgresServer, tmp_path: Path
) -> None:
    commands, config = readme_section()
    install, export, *serves, balance = commands
    assert install == ".venv/bin/pip install -e '.[cluster]'" and balance == "haproxy -f plait-haproxy.cfg"
    env = dict(item.split("=", 1) for item in shlex.split(export.removeprefix("export ")))
    assert set(env) == {"PLAIT_CLUSTER", "PLAIT_STORE"}
    env = {"PLAIT_CLUSTER": redis.url, "PLAIT_STORE": postgres.fresh_dsn()}
    ports = {port: free_port() for port in ("8801", "8802", "8803", "8765")}
    for old, new in ports.items():
        config = config.replace(f":{old}", f":{new}")
    async with AsyncExitStack() as stack:
        served: list[Served] = []
        for line in serves:
            argv = shlex.split(line.removesuffix(" &"))
            assert argv[:2] == [".venv/bin/plait", "serve"]
            argv[argv.index("--port") + 1] = str(ports[argv[argv.index("--port") + 1]])
            served.append(await stack.enter_async_context(plait_serve(*argv[2:], env=env)))
        await stack.enter_async_context(haproxy(config, tmp_path))
        url = f"ws://127.0.0.1:{ports['8765']}/"
        with trio.fail_after(30):
            await until_served(ports["8765"])
            await http_session_through(ports["8765"])
        acked: dict[str, list[str]] = {name: [] for name in "abcdef"}
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for name, done in acked.items():
                nursery.start_soon(editor, url, name, done, stop)
            await stop.wait()
            victim = max(served, key=lambda s: connections_to(s.port))  # where the balancer sent them
            assert connections_to(victim.port) > 0
            victim.process.send_signal(signal.SIGKILL)
            await victim.process.wait()
        assert all(len(done) == EDITS for done in acked.values())
        async with connect(url) as client, client.join("notes") as room:
            await room.synced()
            text = str(room.text)
            assert [edit for done in acked.values() for edit in done if edit not in text] == []
