"""`plait client` positions count characters, whatever the text holds (spec/notes/unicode.md):
pycrdt 0.14 counts UTF-8 bytes, and a byte inside a character would make an update the server
refuses."""

from __future__ import annotations

from trio.testing import MockClock

from ..engine.conftest import make_engine
from .cable import Cable, client_for, until_text
from .test_cli import terminal


async def test_positions_count_characters_in_text_with_accents_cjk_and_emoji(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        async with terminal(cable) as term, client_for(cable) as other, other.join("demo") as room:
            await room.synced()
            await term.screen.wait_for("[connection] joined 'demo'")
            await term.type("/append é漢😎b")
            await until_text(room, "é漢😎b")
            await term.type("/insert 3 X")  # after the emoji: bytes 2 + 3 + 4 = 9
            await until_text(room, "é漢😎Xb")
            await term.type("/insert 1 Y")  # byte 1 is inside "é"
            await until_text(room, "éY漢😎Xb")
            await term.type("/delete 2 2")  # 漢 and 😎
            await until_text(room, "éYXb")
            await term.quit()
    assert term.status == 0
