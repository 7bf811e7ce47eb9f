"""Three `plait serve --cluster` processes on one Redis and one PostgreSQL (architecture:
Scale-out): a room shared by clients on all three behaves like a room on one, and survives
the loss of any one process with nothing acknowledged lost."""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio

from plait.client import Room, StorageUnavailable, connect
from tests.servers import PostgresServer, RedisServer, free_port

from .serveprocess import Served, plait_serve
from .test_websocket import until

pytestmark = pytest.mark.slow  # real Redis, PostgreSQL and processes

HEARTBEAT_BOUND = 4 * 1.5 + 5
"""Seconds within which a dead process's members leave everyone's presence: its heartbeat
key lapses (3 heartbeats), a peer notices at its next heartbeat, plus the presence grace."""


@asynccontextmanager
async def cluster(redis: RedisServer, dsn: str, processes: int = 3) -> AsyncIterator[list[Served]]:
    async with AsyncExitStack() as stack:
        served = [
            await stack.enter_async_context(
                plait_serve("--port", "0", "--store", dsn, "--cluster", redis.url, "--no-demo")
            )
            for _ in range(processes)
        ]
        yield served


def ws(served: Served) -> str:
    return f"ws://127.0.0.1:{served.port}/"


class Balancer:
    """A TCP load balancer on 127.0.0.1: each new connection goes to the next process that
    accepts it (round robin), as a cloud load balancer with health checks would."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.port = 0
        self._next = 0

    async def _pipe(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await sink.aclose()

    async def _handle(self, client: trio.SocketStream) -> None:
        for _ in range(len(self.ports)):
            port = self.ports[self._next % len(self.ports)]
            self._next += 1
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                continue
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pipe, client, upstream)
                nursery.start_soon(self._pipe, upstream, client)
            return
        await client.aclose()


@asynccontextmanager
async def balancer(ports: list[int]) -> AsyncIterator[Balancer]:
    lb = Balancer(ports)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, lb._handle, 0, "127.0.0.1")  # type: ignore[arg-type]
        lb.port = listeners[0].socket.getsockname()[1]
        yield lb
        nursery.cancel_scope.cancel()


async def members(served: list[Served], stack: AsyncExitStack) -> list[Room]:
    """A client on each process, in room "notes", synced."""
    rooms = []
    for process in served:
        client = await stack.enter_async_context(connect(ws(process)))
        room = await stack.enter_async_context(client.join("notes"))
        await room.synced()
        rooms.append(room)
    return rooms


async def within(seconds: float, room: Room, check: Callable[[], bool]) -> None:
    with trio.fail_after(seconds):
        await until(room, check)


async def test_a_room_shared_by_three_processes_behaves_like_one(redis: RedisServer, postgres: PostgresServer) -> None:
    async with cluster(redis, postgres.fresh_dsn()) as served, AsyncExitStack() as stack:
        rooms = await members(served, stack)
        for i, room in enumerate(rooms):
            await room.set_presence({"name": f"user{i}"})
        events = [room.events() for room in rooms]
        for i, room in enumerate(rooms):
            room.text.insert(len(room.text), f"[{i}]")
            for n in range(5):
                await room.publish("chat", f"{i}.{n}")
        for room in rooms:
            await room.flushed()
        for room in rooms:
            await within(20, room, lambda r=room: all(f"[{i}]" in str(r.text) for i in range(3)))  # type: ignore[misc]
            # users() leaves out the connection's own session (spec §5.4): the other two
            await within(20, room, lambda r=room: len([s for v in r.users().values() for s in v]) == 2)  # type: ignore[misc]
        assert len({str(room.text) for room in rooms}) == 1  # converged
        for feed in events:
            seen = []
            with trio.fail_after(20):
                for _ in range(15):
                    seen.append(await feed.__anext__())
            assert [e.seq for e in seen] == list(range(1, 16))  # once each, in seq order
            assert sorted(e.payload for e in seen) == sorted(f"{i}.{n}" for i in range(3) for n in range(5))


async def test_a_killed_process_loses_nothing_acknowledged_and_its_members_leave(
    redis: RedisServer, postgres: PostgresServer
) -> None:
    dsn = postgres.fresh_dsn()
    async with cluster(redis, dsn) as served:
        victim = served[2]
        async with connect(ws(served[0])) as a, a.join("notes") as watcher, connect(ws(victim)) as v, v.join("notes") as doomed:
            await watcher.synced()
            await doomed.synced()
            await doomed.set_presence({"name": "doomed"})
            await within(20, watcher, lambda: len(watcher.users()) == 1)  # the doomed one (not itself)
            for n in range(20):
                doomed.text.insert(len(doomed.text), f"<{n}>")
                await doomed.flushed()  # acknowledged: committed to PostgreSQL
            victim.process.send_signal(signal.SIGKILL)
            await victim.process.wait()
            # Every acknowledged edit reached the others, and the dead process's member leaves.
            await within(20, watcher, lambda: all(f"<{n}>" in str(watcher.text) for n in range(20)))
            await within(HEARTBEAT_BOUND + 5, watcher, lambda: len(watcher.users()) == 0)
            watcher.text.insert(0, "still here ")
            with trio.fail_after(20):
                await watcher.flushed()  # the others never stalled
        async with connect(ws(served[1])) as b, b.join("notes") as late:
            await late.synced()
            assert str(late.text).startswith("still here ")
            assert all(f"<{n}>" in str(late.text) for n in range(20))


async def test_a_redis_restart_under_load_loses_nothing_and_the_processes_hear_each_other_again(
    redis: RedisServer, postgres: PostgresServer
) -> None:
    async with cluster(redis, postgres.fresh_dsn(), processes=2) as served, AsyncExitStack() as stack:
        rooms = await members(served, stack)
        for n in range(30):
            if n == 10:
                await trio.to_thread.run_sync(redis.restart)  # every stream and key is gone
            for i, room in enumerate(rooms):
                room.text.insert(len(room.text), f"<{i}.{n}>")
            for room in rooms:
                with trio.fail_after(20):
                    await room.flushed()  # acknowledged: in PostgreSQL, Redis or not
        for room in rooms:
            await within(30, room, lambda r=room: all(f"<{i}.{n}>" in str(r.text) for i in range(2) for n in range(30)))  # type: ignore[misc]


async def test_a_stalled_database_is_told_to_clients_of_every_process_and_service_resumes(
    redis: RedisServer, postgres: PostgresServer
) -> None:
    async with cluster(redis, postgres.fresh_dsn(), processes=2) as served, AsyncExitStack() as stack:
        rooms = await members(served, stack)
        rooms[0].text.insert(0, "kept")
        await rooms[0].flushed()
        await trio.to_thread.run_sync(postgres.pause)
        try:
            rooms[1].text.insert(0, "maybe ")
            with trio.fail_after(40), pytest.raises(StorageUnavailable):
                await rooms[1].flushed()  # told, not left waiting: nothing unstored is reported saved
            with trio.fail_after(40), pytest.raises(StorageUnavailable):
                await rooms[0].publish("chat", "numbered?")  # the event numbers are PostgreSQL's too
        finally:
            await trio.to_thread.run_sync(postgres.resume)
        async with connect(ws(served[0])) as client, client.join("notes") as room:
            with trio.fail_after(40):
                await room.synced()
            assert "kept" in str(room.text)
            assert await room.publish("chat", "after") >= 1


async def test_after_a_redis_restart_everyone_sees_everyone_again_and_events_flow(
    redis: RedisServer, postgres: PostgresServer
) -> None:
    """A restarted Redis has lost every heartbeat key: no live process is taken for dead
    (its members stay in everyone's presence), and events, refused while Redis is away, are
    published once it is back, in one order everywhere."""
    async with cluster(redis, postgres.fresh_dsn()) as served, AsyncExitStack() as stack:
        rooms = await members(served, stack)
        for i, room in enumerate(rooms):
            await room.set_presence({"name": f"user{i}"})
        for room in rooms:
            await within(20, room, lambda r=room: len(r.users()) == 2)  # type: ignore[misc]
        await trio.to_thread.run_sync(redis.restart)
        feeds = [room.events() for room in rooms]
        for i, room in enumerate(rooms):
            with trio.fail_after(30):
                for _ in range(100):  # refused (told) until Redis is back, then published
                    try:
                        await room.publish("chat", f"after {i}")
                        break
                    except StorageUnavailable:
                        await trio.sleep(0.2)
        for feed in feeds:
            with trio.fail_after(20):
                seen = [await feed.__anext__() for _ in range(3)]
            assert [e.seq for e in seen] == [1, 2, 3]
        with trio.move_on_after(3 * 1.5 + 2):  # past the heartbeats' lapse: nobody was dropped
            for room in rooms:
                await until(room, lambda r=room: len(r.users()) != 2)  # type: ignore[misc]
            raise AssertionError("a live process's members were dropped after the Redis restart")


async def test_a_cluster_process_whose_redis_cannot_be_reached_says_so_in_one_line(postgres: PostgresServer) -> None:
    port = free_port()  # nothing listens there
    process = await trio.run_process(
        [sys.executable, "-m", "plait.engine._cli", "serve", "--port", "0", "--store", postgres.fresh_dsn(),
         "--cluster", f"redis://:secret@127.0.0.1:{port}"],
        capture_stdout=True, capture_stderr=True, check=False,
    )
    err = process.stderr.decode()
    assert process.returncode == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err and "secret" not in err, err
    assert err.startswith(f"plait serve: --cluster redis://:(hidden)@127.0.0.1:{port}: cannot reach Redis: "), err
    assert "Trio nursery" not in err, err
