"""Presence shows people, not sessions (spec §4.2 anonymous_key, §5.4): a quick reconnect of an
anonymous SDK user is the same user, and the per-user view reports it as one change of that
user, never as a second person or a leave."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from plait.client import ClientState, PresenceChanged
from plait.engine import Hooks

from ..engine.conftest import make_engine
from .cable import Cable, client_for


async def test_the_same_anonymous_key_is_the_same_user_and_stays_secret() -> None:
    hooks = Hooks()
    a = await hooks.authenticate(None, {"anonymous_key": "k" * 24})
    again = await hooks.authenticate(None, {"anonymous_key": "k" * 24})
    other = await hooks.authenticate(None, {"anonymous_key": "j" * 24})
    short = await hooks.authenticate(None, {"anonymous_key": "k"})  # too short to be a secret
    assert a == again != other
    assert "k" * 24 not in a["id"] and a["id"].startswith("anon-")
    assert short["id"] != a["id"]


async def test_a_quick_reconnect_is_one_change_of_the_same_user(autojump_clock: MockClock) -> None:
    """The issue: in the two-terminal demo a reconnect showed a second person for 5 s and a
    leave line with a session id."""
    async with make_engine() as engine:
        cable, watcher_cable = Cable(engine), Cable(engine)
        async with client_for(cable) as ada, client_for(watcher_cable) as bob:
            async with ada.join("r") as r1, bob.join("r") as r2:
                await r1.synced()
                await r2.synced()
                await r1.set_presence({"name": "ada"})
                with trio.fail_after(5):
                    while not any(e.state == {"name": "ada"} for e in r2.presence.values()):
                        await trio.sleep(0.05)
                (user,) = r2.users()
                changes = r2.changes()
                await cable.cut()
                await ada.wait_state(ClientState.RECONNECTING)
                await ada.wait_state(ClientState.OPEN)
                seen: list[PresenceChanged] = []
                with trio.move_on_after(10):  # past the 3 s presence grace of these tests
                    async for change in changes:
                        if isinstance(change, PresenceChanged):
                            seen.append(change)
                assert seen, "the reconnect was not seen at all"
                assert all(user not in c.users_left and user not in c.users_joined for c in seen)
                assert any(user in c.users_updated for c in seen)
                assert list(r2.users()) == [user]
                assert len(r2.users()[user]) == 1  # the old session is gone, not lingering
