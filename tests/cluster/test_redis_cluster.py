"""Two engines in one Trio process, each with its own RedisCluster on one private Redis and one
shared store: a room shared by members of both behaves like a room on one (architecture:
Scale-out). The store here is a memory store with the shared store's numbering; the three-process
tests with PostgreSQL are in tests/e2e/test_cluster.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from plait.engine import Engine, EngineConfig
from plait.engine.cluster import RedisCluster
from plait.protocol import Event, Publish, Update
from plait.storage import MemoryStore
from tests.engine.client import DocClient, edit
from tests.servers import RedisServer

pytestmark = pytest.mark.slow  # a real Redis


class SharedMemoryStore(MemoryStore):
    """One memory store for both engines, numbering events as a shared store does."""

    def __init__(self) -> None:
        super().__init__()
        self.heads: dict[str, int] = {}
        self.epochs: dict[str, str] = {}

    async def next_seq(self, room: str, head: int) -> int:
        self.heads[room] = max(self.heads.get(room, 0), head) + 1
        return self.heads[room]

    async def epoch(self, room: str, proposed: str) -> str:
        return self.epochs.setdefault(room, proposed)


@asynccontextmanager
async def node(redis: RedisServer, store: SharedMemoryStore) -> AsyncIterator[Engine]:
    async with RedisCluster(redis.url, store, heartbeat=0.5) as cluster:
        async with Engine(store=store, config=EngineConfig(), replication=cluster, sequence=cluster, lease=cluster) as engine:
            yield engine


async def member(engine: Engine, room: str = "r") -> DocClient:
    client = DocClient(engine.connect_memory())
    await client.hello()
    await client.join(room)
    return client


async def until_text(client: DocClient, text: str, limit: int = 200) -> None:
    for _ in range(limit):
        if str(client.text) == text:
            return
        frame = await client.receive()
        if isinstance(frame, Update) or type(frame).__name__ == "SyncStep2":
            client.apply(frame.update)  # type: ignore[attr-defined]
    raise AssertionError(f"{str(client.text)!r} never became {text!r}")


async def test_an_edit_on_one_process_reaches_members_on_the_other(redis: RedisServer) -> None:
    store = SharedMemoryStore()
    async with node(redis, store) as a, node(redis, store) as b:
        alice, bob = await member(a), await member(b)
        await alice.send(Update(1, 2, edit(alice.doc, "hello")))
        with trio.fail_after(10):
            await until_text(bob, "hello")
        await bob.send(Update(1, 2, edit(bob.doc, " world")))
        with trio.fail_after(10):
            await until_text(alice, "hello world")


async def test_events_from_both_processes_arrive_once_and_in_seq_order_everywhere(redis: RedisServer) -> None:
    store = SharedMemoryStore()
    async with node(redis, store) as a, node(redis, store) as b:
        alice, bob = await member(a), await member(b)
        for i in range(10):
            await alice.send(Publish(1, alice.next_ref(), "chat", f"a{i}", None))
            await bob.send(Publish(1, bob.next_ref(), "chat", f"b{i}", None))
        for client in (alice, bob):
            seen: list[int] = []
            with trio.fail_after(10):
                while len(seen) < 20:
                    frame = await client.receive()
                    if isinstance(frame, Event):
                        seen.append(frame.seq)
            assert seen == list(range(1, 21))
