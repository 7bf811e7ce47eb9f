"""What escapes the SDK's context managers is the documented exception itself, never an
ExceptionGroup wrapping it, so `except Forbidden:` around `connect()`/`join()` works."""

from __future__ import annotations

from typing import Any

import pytest
from trio.testing import MockClock

import plait.client
from plait.client import ConnectionClosed, Forbidden, connect
from plait.client import _errors as errors
from plait.engine import Hooks, Identity, Unauthenticated
from plait.protocol import Access

from ..engine.conftest import make_engine
from .cable import Cable, client_for


class Strict(Hooks):
    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        if token == "bad":
            raise Unauthenticated("who are you")
        return {"id": token or "anon"}

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        return None if room == "secret" else Access.WRITE


def test_every_typed_error_is_exported_by_name() -> None:
    """`__all__` is written out (type checkers cannot read a computed one): it names every class
    of ERROR_TYPES, and each name it lists is the same object in `plait.client`."""
    assert {cls.__name__ for cls in errors.ERROR_TYPES.values()} <= set(errors.__all__)
    assert len(set(errors.__all__)) == len(errors.__all__)
    for name in errors.__all__:
        assert getattr(plait.client, name) is getattr(errors, name), name


async def test_a_refused_join_escapes_as_its_own_type(autojump_clock: MockClock) -> None:
    async with make_engine(hooks=Strict()) as engine:
        with pytest.raises(Forbidden) as info:
            async with client_for(Cable(engine)) as client, client.join("secret") as room:
                await room.synced()
        assert "secret" in info.value.message


async def test_a_refused_connection_escapes_as_connection_closed(autojump_clock: MockClock) -> None:
    async with make_engine(hooks=Strict()) as engine:
        with pytest.raises(ConnectionClosed) as info:
            async with client_for(Cable(engine), token="bad") as client, client.join("r") as room:
                await room.synced()
        assert info.value.code == 4003


async def test_the_blocks_own_errors_escape_unchanged(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        error = KeyError("mine")
        with pytest.raises(KeyError) as info:
            async with client_for(Cable(engine)) as client, client.join("r") as room:
                await room.synced()
                raise error
        assert info.value is error


async def test_a_bad_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a WebSocket URL"):
        async with connect("http://127.0.0.1:1/"):
            pass


def test_a_message_the_server_sent_over_its_limit_is_not_blamed_on_the_server_closing() -> None:
    # Second fresh-user pass: trio-websocket's own 1009, for a message from the server over
    # the limit the welcome announced, was shown as "the server closed the connection".
    import trio_websocket

    from plait.client._client import _closed

    ours = _closed(trio_websocket.ConnectionClosed(trio_websocket.CloseReason(1009, "Exceeded maximum message size: 64 bytes")))
    error = ConnectionClosed.from_close(ours.code, ours.reason, local=ours.local)
    assert str(error).startswith("this client closed the connection: the server sent a message over the limit")
    assert "64 bytes" in str(error) and not error.retryable
    theirs = _closed(trio_websocket.ConnectionClosed(trio_websocket.CloseReason(1009, "message over 16777216 bytes")))
    assert not theirs.local
    assert str(ConnectionClosed.from_close(theirs.code, theirs.reason)).startswith("the server closed the connection")
