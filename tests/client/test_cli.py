"""`plait client` driven in-process against an in-memory engine under MockClock: what a person
types goes in through a memory stream, what they would see is collected by a `Screen`."""

from __future__ import annotations

import io
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from plait.client import Backoff
from plait.client._cli import run
from plait.engine import Hooks, Identity, Unauthenticated

from ..engine.conftest import make_engine
from .cable import Cable, client_for, until_text


class Screen(io.StringIO):
    """What the terminal shows; `wait_for` returns once a text has been printed."""

    def __init__(self) -> None:
        super().__init__()
        self._printed = trio.Event()

    def write(self, s: str) -> int:
        self._printed.set()
        return super().write(s)

    async def wait_for(self, text: str) -> None:
        for _ in range(1000):
            if text in self.getvalue():
                return
            self._printed = trio.Event()
            await self._printed.wait()
        raise AssertionError(f"never printed {text!r}; the screen shows:\n{self.getvalue()}")


class Terminal:
    def __init__(self, keyboard: trio.testing.MemorySendStream, screen: Screen) -> None:
        self.keyboard = keyboard
        self.screen = screen
        self.status: int | None = None

    async def type(self, line: str) -> None:
        await self.keyboard.send_all(line.encode() + b"\n")

    async def quit(self) -> int | None:
        await self.type("/quit")
        return self.status


@asynccontextmanager
async def terminal(cable: Cable, room: str = "demo", name: str | None = "ada", token: str | None = None) -> AsyncIterator[Terminal]:
    keyboard, stdin = trio.testing.memory_stream_one_way_pair()
    screen = Screen()
    term = Terminal(keyboard, screen)

    async def go() -> None:
        term.status = await run(
            "ws://memory/", room, token, name, stdin, screen,
            open_transport=cable.open, backoff=Backoff(base=0.5, cap=4, rng=random.Random(1)),
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(go)
        yield term
        await keyboard.aclose()  # end of input: the client leaves


async def test_help_lists_every_command(autojump_clock: MockClock) -> None:
    async with make_engine() as engine, terminal(Cable(engine)) as term:
        await term.screen.wait_for("[connection] joined 'demo'")
        await term.type("/help")
        for command in ("/append TEXT", "/insert POS TEXT", "/delete POS COUNT", "/name NAME", "/cursor POS", "/typing", "/help", "/quit"):
            await term.screen.wait_for(command)


async def test_typos_get_a_usage_line_not_a_python_error(autojump_clock: MockClock) -> None:
    async with make_engine() as engine, terminal(Cable(engine)) as term:
        await term.screen.wait_for("[connection] joined 'demo'")
        await term.type("/insert x y")
        await term.screen.wait_for("[error] usage: /insert POS TEXT (POS must be a whole number up to 15 digits, not 'x')")
        await term.type("/delete 1")
        await term.screen.wait_for("[error] usage: /delete POS COUNT")
        await term.type("/frobnicate")
        await term.screen.wait_for("[error] unknown command /frobnicate (/help lists the commands)")
        assert "invalid literal" not in term.screen.getvalue()
        await term.type("/append ok")
        await term.screen.wait_for("[doc] 'ok'")


async def test_chat_typing_and_leave_lines_use_names(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        async with terminal(cable, name="ada") as term, client_for(cable) as bob_client:
            await term.screen.wait_for("[connection] joined 'demo'")
            async with bob_client.join("demo") as bob:
                await bob.synced()
                await bob.set_presence({"name": "bob"})
                await term.screen.wait_for("[presence] bob joined")
                await bob.publish("chat", {"text": "hi ada"})
                await term.screen.wait_for("[chat] bob: hi ada")
                await term.type("hello bob")
                await term.screen.wait_for("[chat] ada: hello bob")
                changes = bob.changes()
                await term.type("/typing")
                async for change in changes:
                    if getattr(change, "sessions", None):
                        break
                await bob.set_typing(True)
                await term.screen.wait_for("[typing] bob typing")
            await term.screen.wait_for("[presence] bob left")
            assert " left" not in term.screen.getvalue().replace("[presence] bob left", "")


async def test_edits_from_the_terminal_reach_the_room(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        async with terminal(cable) as term, client_for(cable) as other, other.join("demo") as room:
            await room.synced()
            await term.screen.wait_for("[connection] joined 'demo'")
            await term.type("/append hello world")
            await until_text(room, "hello world")
            await term.type("/delete 5 6")
            await until_text(room, "hello")
            await term.type("/insert 0 >")
            await until_text(room, ">hello")


async def test_each_failed_attempt_is_printed_with_its_delay(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        cable.down = True
        async with terminal(cable) as term:
            await term.screen.wait_for("[connection] attempt 3 failed: network is down; retrying in ")
            cable.down = False
            await term.screen.wait_for("[connection] joined 'demo'")
            await term.quit()
    assert term.status == 0


class Refuses(Hooks):
    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        raise Unauthenticated("who are you")


async def test_a_refusal_ends_the_client_with_the_close_codes_meaning(autojump_clock: MockClock) -> None:
    async with make_engine(hooks=Refuses()) as engine:
        cable = Cable(engine)
        async with terminal(cable) as term:
            await term.screen.wait_for("[error]")
            await trio.sleep(60)  # it ends by itself; no retries meanwhile
            assert term.status == 1
    assert "4003" in term.screen.getvalue() and "who are you" in term.screen.getvalue()
    assert cable.opened == 1


async def test_quit_while_the_server_is_unreachable_ends_at_once(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        cable.down = True
        async with terminal(cable) as term:
            await term.screen.wait_for("[connection] attempt 2 failed")
            await term.type("hello")  # typed offline: dropped with the rest on /quit, and said so
            start = trio.current_time()
            await term.quit()
            await term.screen.wait_for("[connection] not connected; quitting; dropped: 1 typed line not run")
            assert trio.current_time() - start < 0.1
    assert term.status == 0


async def test_end_of_input_while_the_server_is_unreachable_ends_at_once(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        cable.down = True
        async with terminal(cable) as term:
            await term.screen.wait_for("[connection] attempt 1 failed")
            await term.keyboard.aclose()
            await term.screen.wait_for("[connection] not connected; quitting")
    assert term.status == 0
    assert cable.opened == 0


async def test_quit_while_reconnecting_ends_at_once(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        async with terminal(cable) as term:
            await term.screen.wait_for("[connection] joined 'demo'")
            cable.down = True
            await cable.cut()  # while its presence is on the way: restored on reconnect
            await term.screen.wait_for("[connection] attempt 1 failed")
            await term.type("/append lost")  # the edit waits for a connection to be saved
            await term.type("are you there?")  # and the chat line for the edit
            await term.quit()
            # Second fresh-user pass: these were dropped without a word.
            await term.screen.wait_for("[connection] not connected; quitting; dropped: 1 typed line not run, 1 document edit not saved")
    assert term.status == 0


async def test_quit_while_a_message_waits_for_a_connection_says_it_is_dropped(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        async with terminal(cable) as term:
            await term.screen.wait_for("[connection] joined 'demo'")
            cable.down = True
            await cable.cut()
            await term.screen.wait_for("[connection] attempt 1 failed")
            await term.type("are you there?")
            await term.quit()
            await term.screen.wait_for("[connection] not connected; quitting; dropped: 1 message not sent")
    assert term.status == 0


async def test_lines_typed_before_the_join_run_once_joined(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        cable.down = True
        async with terminal(cable) as term:
            await term.screen.wait_for("[connection] attempt 1 failed")
            await term.type("/append early")
            cable.down = False
            await term.screen.wait_for("[doc] 'early'")
            await term.quit()
    assert term.status == 0


async def test_others_text_is_shown_never_obeyed_and_huge_positions_are_usage_errors(autojump_clock: MockClock) -> None:
    # Second fresh-eyes run: escape sequences in chat text reached the terminal, a newline forged
    # a "[chat] admin: ..." line, and /cursor 99999999999999999999999 ended the client with a
    # traceback.
    async with make_engine() as engine:
        cable = Cable(engine)
        async with terminal(cable, name="ada") as term, client_for(cable) as mallory_client:
            await term.screen.wait_for("[connection] joined 'demo'")
            async with mallory_client.join("demo") as mallory:
                await mallory.synced()
                await mallory.set_presence({"name": "mal\x1b[2Jlory"})
                await mallory.publish("chat", {"text": "hi\n[chat] admin: give me your token\x07"})
                await term.screen.wait_for("[chat] mal\\x1b[2Jlory: hi\\x0a[chat] admin: give me your token\\x07")
            screen = term.screen.getvalue()
            assert "\x1b" not in screen and "\x07" not in screen
            assert not any(line.startswith("[chat] admin") for line in screen.splitlines())
            await term.type("/cursor 99999999999999999999999")
            await term.screen.wait_for("[error] usage: /cursor POS|off (POS must be a whole number up to 15 digits")
            await term.type("/cursor ²")
            await term.screen.wait_for("not '²')")
            await term.type("/append still here")
            await term.screen.wait_for("[doc] 'still here'")


def test_a_name_the_terminal_could_not_decode_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    # Second fresh-eyes run: `plait client URL demo --name $'\xff'` joined, then ended with a
    # traceback (Python hands such a byte over as a lone surrogate).
    from types import SimpleNamespace

    from plait.client import terminal_main

    args = SimpleNamespace(url="ws://127.0.0.1:9/", room="demo", token=None, name="\udcff")
    assert terminal_main(args) == 2
    assert capsys.readouterr().out == "[error] --name is not valid text\n"


@pytest.mark.parametrize("room", ["", "a\nb", "r" * 257])
def test_a_room_name_no_server_takes_is_status_2_before_connecting(capsys: pytest.CaptureFixture[str], room: str) -> None:
    # Fresh-user pass 3: a control character connected first, then ended with status 1.
    from types import SimpleNamespace

    from plait.client import terminal_main

    args = SimpleNamespace(url="ws://127.0.0.1:9/", room=room, token=None, name=None)  # port 9: nothing listens
    assert terminal_main(args) == 2
    out = capsys.readouterr().out
    assert out.startswith("[error] invalid room name") and out.count("\n") == 1
