"""The demo page against what other members, reloads and restarts do to it (found by a fresh
user): a member's presence cannot restyle others' pages, a user's two tabs are one name, a
reload remembers one's vote, and a server that lost its history does not leave stale counts."""

from __future__ import annotations

import re

import pytest

from tests.servers import free_port

from .conftest import Contexts, Server, start_plait_serve, stop_plait_serve
from .test_demo import Demo, room_name

pytestmark = pytest.mark.slow

HOSTILE = "red; position: fixed; inset: 0; z-index: 99999; background: url(http://evil.invalid/leak)"


def test_a_members_presence_cannot_restyle_the_others_pages(server: Server, contexts: Contexts) -> None:
    room = room_name()
    ana = Demo.open(contexts.new(), server, room, "Ana")
    fetched: list[str] = []
    ana.page.on("request", lambda request: fetched.append(request.url) if "evil.invalid" in request.url else None)
    mal = Demo.open(contexts.new(), server, room, "Mal")
    mal.page.evaluate(
        "hostile => window.plait.awareness.setLocalStateField('user', {name: 'M'.repeat(500), color: hostile, colorLight: hostile})",
        HOSTILE,
    )
    mal.type("mal types here")
    ana.wait_text("mal types here")
    caret = ana.page.locator(".cm-ySelectionCaret").first
    caret.wait_for()
    style = caret.get_attribute("style") or ""
    assert "fixed" not in style and "url(" not in style, style
    assert len(ana.page.locator(".cm-ySelectionInfo").first.inner_text()) <= 40
    assert fetched == []


def test_a_rename_in_one_tab_is_the_users_name_in_every_tab(server: Server, contexts: Contexts) -> None:
    room = room_name()
    context = contexts.new()
    first = Demo.open(context, server, room, "Ada")
    second = Demo.open(context, server, room, "Ada")
    watcher = Demo.open(contexts.new(), server, room, "Bo")
    second.page.fill("#name", "Ada Lovelace")
    first.page.wait_for_function("document.querySelector('#name').value === 'Ada Lovelace'")
    watcher.page.locator("#presence li.person", has_text="Ada Lovelace").wait_for()
    watcher.page.wait_for_function(  # no chip of the old name is left
        "() => [...document.querySelectorAll('#presence .person-name')].every(n => n.textContent !== 'Ada')"
    )


def test_a_reload_shows_ones_own_vote_again(server: Server, contexts: Contexts) -> None:
    room = room_name()
    ana = Demo.open(contexts.new(), server, room, "Ana")
    ana.vote("Sushi")
    ana.wait_counts(Sushi=1)
    ana.page.reload()
    ana.page.wait_for_function("document.body.dataset.ready === 'true'")
    ana.wait_counts(Sushi=1)
    ana.page.locator('button[data-option="Sushi"][aria-pressed="true"]').wait_for()


def test_after_a_memory_store_restart_the_page_counts_only_the_new_history(contexts: Contexts) -> None:
    port = free_port()
    served = start_plait_serve("--store", "memory", "--port", str(port))
    try:
        room = room_name()
        ana = Demo.open(contexts.new(), served, room, "Ana")
        ana.vote("Pizza")
        ana.wait_counts(Pizza=1)
        ana.say("before the restart")
        ana.wait_chat("before the restart")
        stop_plait_serve(served.process)
        served = start_plait_serve("--store", "memory", "--port", str(port))
        ana.page.locator('#status-state[data-state="open"]').wait_for()
        ana.wait_counts(Pizza=0, Sushi=0)  # the new server's history has no votes
        ana.page.locator("#chat-log li.msg", has_text="before the restart").wait_for(state="detached")
        assert not ana.page.locator("#status-error").is_visible()  # open: no stale "last error"
        late = Demo.open(contexts.new(), served, room, "Bo")
        ana.vote("Tacos")
        for user in (ana, late):
            user.wait_counts(Pizza=0, Tacos=1)
        assert re.search(r"1 vote\b", ana.page.locator("#poll-note").inner_text())
    finally:
        stop_plait_serve(served.process)




def test_a_closed_tab_leaves_the_room_at_once(server: Server, contexts: Contexts) -> None:
    room = room_name()
    ana = Demo.open(contexts.new(), server, room, "Ana")
    bo_context = contexts.new()
    bo = Demo.open(bo_context, server, room, "Bo")
    ana.wait_people("Bo")
    started = ana.page.evaluate("performance.now()")
    bo.page.close(run_before_unload=False)
    ana.page.locator("#presence li.person", has_text="Bo").wait_for(state="detached")
    gone_after = ana.page.evaluate("performance.now()") - started
    assert gone_after < 3000, f"Bo's presence lingered {gone_after:.0f} ms (the grace is 5 s)"


def test_an_edit_too_large_to_send_is_shown_not_silently_kept(server: Server, contexts: Contexts) -> None:
    """A 17 MB paste: more than a message may carry (16 MiB), which the SDK cannot split yet."""
    room = room_name()
    ana = Demo.open(contexts.new(), server, room, "Ana")
    ana.page.evaluate("window.plait.room.doc.getText('text').insert(0, 'x'.repeat(17 * 1024 * 1024))")
    ana.page.locator("#status-error", has_text="not saved").wait_for()
    assert "FRAME_TOO_LARGE" in ana.page.locator("#status-error").inner_text()
