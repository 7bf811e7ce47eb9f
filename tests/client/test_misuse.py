"""The SDK used the ways a new user gets wrong, under MockClock against an in-memory engine:
invalid room names, requests larger than the server accepts, a room used after its `join`
block, a client used after its `connect` block. Each mistake raises one documented exception
at once; none is sent anyway, none hangs, none is silently lost."""

from __future__ import annotations

import pytest
from trio.testing import MockClock

from plait.client import InvalidRoomName, PlaitError

from ..engine.conftest import make_engine
from .cable import Cable, client_for


@pytest.mark.parametrize("name", ["a\nb", "", "r" * 257, "a\ud800"], ids=["control", "empty", "257", "surrogate"])
async def test_every_invalid_room_name_raises_invalid_room_name(autojump_clock: MockClock, name: str) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable) as c:
            with pytest.raises(InvalidRoomName) as info:
                async with c.join(name):
                    pass
            assert isinstance(info.value, PlaitError)
            async with c.join("fine") as room:  # the client is unharmed
                await room.synced()
